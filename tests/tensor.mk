# tests/tensor.mk - tests of this area (included from tests/local.mk)
