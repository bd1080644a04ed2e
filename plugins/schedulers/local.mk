# plugins/schedulers/local.mk - build rules for plugins/schedulers (included from the top Makefile.am)
