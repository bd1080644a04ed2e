# plugins/models/local.mk - build rules for plugins/models (included from the top Makefile.am)
