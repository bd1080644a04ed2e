# plugins/encoders/local.mk - build rules for plugins/encoders (included from the top Makefile.am)
