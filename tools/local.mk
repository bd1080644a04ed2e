# tools/local.mk - the `pipeline` command
bin_PROGRAMS += tools/pipeline
tools_pipeline_SOURCES = tools/pipeline.c tools/commands.h tools/cmd_core.c tools/cmd_forward.c
tools_pipeline_LDADD = libmmpipe.la
