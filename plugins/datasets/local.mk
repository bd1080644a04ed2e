# plugins/datasets/local.mk - build rules for plugins/datasets (included from the top Makefile.am)
