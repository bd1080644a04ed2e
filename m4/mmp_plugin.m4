# mmp_plugin.m4 - per-plugin build switches, kind lists and the summary table.
#
# MMP_PLUGIN_KIND_LISTS: --enable-KINDS=a,b for each plugin kind.
# MMP_PLUGIN(kind-plural, name, deps-ok (shell test), reason when not, description)
#   defines --enable-NAME/--disable-NAME, the automake conditional
#   BUILD_PLUGIN_NAME, and a row of the summary table.

AC_DEFUN([MMP_PLUGIN_KIND_LISTS], [
m4_foreach_w([mmp_k], [datasets processors encoders schedulers models tasks], [
AC_ARG_ENABLE(mmp_k,
  [AS_HELP_STRING([--enable-]mmp_k[=LIST], [build only the ]mmp_k[ named in the comma-separated LIST (--disable-]mmp_k[: none)])],
  [mmp_list_[]mmp_k="$enableval"], [mmp_list_[]mmp_k=yes])
])
mmp_summary=""
])

AC_DEFUN([MMP_PLUGIN], [
AC_ARG_ENABLE([$2],
  [AS_HELP_STRING([--enable-$2], [$1: $5 (default: on when its dependencies are found)])],
  [mmp_en_$2="$enableval"], [mmp_en_$2=auto])
mmp_build_$2=no
mmp_why_$2=""
mmp_list_cur="$mmp_list_$1"
if test "x$mmp_en_$2" = xno; then
  mmp_why_$2="disabled by --disable-$2"
elif test "x$mmp_en_$2" = xauto && test "x$mmp_list_cur" = xno; then
  mmp_why_$2="disabled by --disable-$1"
elif test "x$mmp_en_$2" = xauto && test "x$mmp_list_cur" != xyes && \
     ! echo ",$mmp_list_cur," | grep -q ",$2,"; then
  mmp_why_$2="not in --enable-$1 list"
elif $3; then
  mmp_build_$2=yes
else
  if test "x$mmp_en_$2" = xyes; then
    AC_MSG_ERROR([plugin $2 was asked for but $4])
  fi
  mmp_why_$2="$4"
fi
AM_CONDITIONAL([BUILD_PLUGIN_]m4_toupper([$2]), [test "x$mmp_build_$2" = xyes])
if test "x$mmp_build_$2" = xyes; then mmp_state=on; else mmp_state="off: $mmp_why_$2"; fi
mmp_summary="$mmp_summary
m4_format([    %-11s %-18s], [$1], [$2]) $mmp_state"
])
