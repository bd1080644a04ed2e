# plugins/processors/local.mk - build rules for plugins/processors (included from the top Makefile.am)
