# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
