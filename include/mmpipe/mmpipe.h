/* mmpipe/mmpipe.h - the whole public API of libmmpipe.
 *
 *   #include <mmpipe/mmpipe.h>
 *   // cc app.c $(pkg-config --cflags --libs mmpipe)
 */
#ifndef MMPIPE_MMPIPE_H
#define MMPIPE_MMPIPE_H

#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/config.h>
#include <mmpipe/tensor.h>
#include <mmpipe/plugin.h>
#include <mmpipe/core.h>

#endif
