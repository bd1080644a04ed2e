# tests/schedulers.mk - tests of this area (included from tests/local.mk)
