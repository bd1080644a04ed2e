# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
MMP_PLUGIN([tasks], [print_config], [true], [], [task that prints its merged configuration])
MMP_PLUGIN([tasks], [demo], [true], [], [small built-in task: denoises a toy signal with a scheduler])
