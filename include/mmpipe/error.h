/* mmpipe/error.h - status codes and the thread-local error message.
 *
 * Every fallible function returns int: 0 (MMP_OK) or a negative MMP_E* code.
 * Constructors return NULL instead. In both cases the detail is in a
 * thread-local message that the failing function set:
 *
 *   if (mmp_config_get_int(cfg, "steps", &n) < 0)
 *     fprintf(stderr, "%s\n", mmp_error_last());
 */
#ifndef MMPIPE_ERROR_H
#define MMPIPE_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmp_status {
  MMP_OK = 0,
  MMP_EINVAL = -1,       /* invalid argument (a caller's mistake) */
  MMP_ENOMEM = -2,       /* out of memory (host or device) */
  MMP_EIO = -3,          /* a file could not be read or written */
  MMP_ENOENT = -4,       /* no such file, key, tensor or implementation */
  MMP_EEXIST = -5,       /* already registered / already present */
  MMP_EABI = -6,         /* plugin built for another ABI */
  MMP_ECONFIG = -7,      /* configuration error (file and line in message) */
  MMP_EPLUGIN = -8,      /* a module failed to load or register */
  MMP_EDATA = -9,        /* malformed input data (weights, datasets, images) */
  MMP_ESHAPE = -10,      /* tensor shapes do not fit */
  MMP_EDTYPE = -11,      /* unsupported or mismatched dtype */
  MMP_EDEVICE = -12,     /* device error, or tensors on different devices */
  MMP_EUNSUPPORTED = -13,/* operation not supported by this backend/plugin */
  MMP_ECANCELED = -14,   /* stopped by the user (SIGINT) */
  MMP_ERUNTIME = -15     /* any other failure at run time */
} mmp_status_t;

/* Name of a status code, e.g. "config error". (transfer none) Never NULL. */
const char *mmp_strerror(int code);

/* Record a message for the calling thread and return @code unchanged, so
 * that `return mmp_error_set(MMP_EINVAL, "bad %s", x);` reads naturally. */
int mmp_error_set(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend context ("loading unet: ") to the current message. Returns the
 * current code. */
int mmp_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The calling thread's last message. (transfer none) "" when none. */
const char *mmp_error_last(void);

/* The calling thread's last code (MMP_OK when none). */
int mmp_error_code(void);

/* Forget the calling thread's message. */
void mmp_error_clear(void);

#ifdef __cplusplus
}
#endif
#endif
