/* core/error.c - status names and the thread-local error message. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <mmpipe/error.h>

#define MMP_ERRMSG_MAX 8192

static _Thread_local char errmsg[MMP_ERRMSG_MAX];
static _Thread_local int errcode;

const char *mmp_strerror(int code) {
  switch (code) {
  case MMP_OK: return "success";
  case MMP_EINVAL: return "invalid argument";
  case MMP_ENOMEM: return "out of memory";
  case MMP_EIO: return "input/output error";
  case MMP_ENOENT: return "not found";
  case MMP_EEXIST: return "already exists";
  case MMP_EABI: return "plugin ABI mismatch";
  case MMP_ECONFIG: return "configuration error";
  case MMP_EPLUGIN: return "plugin error";
  case MMP_EDATA: return "malformed data";
  case MMP_ESHAPE: return "shape mismatch";
  case MMP_EDTYPE: return "dtype mismatch";
  case MMP_EDEVICE: return "device error";
  case MMP_EUNSUPPORTED: return "not supported";
  case MMP_ECANCELED: return "canceled";
  case MMP_ERUNTIME: return "runtime error";
  default: return "unknown error";
  }
}

int mmp_error_set(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errmsg, sizeof errmsg, fmt, ap);
  va_end(ap);
  errcode = code;
  return code;
}

int mmp_error_prefix(const char *fmt, ...) {
  char prefix[1024], old[MMP_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, errmsg, sizeof old);
  snprintf(errmsg, sizeof errmsg, "%s%s", prefix, old);
  return errcode;
}

const char *mmp_error_last(void) { return errmsg; }

int mmp_error_code(void) { return errcode; }

void mmp_error_clear(void) {
  errmsg[0] = '\0';
  errcode = MMP_OK;
}
