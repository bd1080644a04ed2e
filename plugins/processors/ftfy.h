/* plugins/processors/ftfy.h - ftfy 6.1.1's fix_text (default configuration)
 * and Python's html.unescape on code point strings (part of libtextcommon). */
#ifndef MMPIPE_PLUGINS_FTFY_H
#define MMPIPE_PLUGINS_FTFY_H

#include "plugins/processors/textcommon.h"

/* ftfy.fix_text(text) with ftfy 6.1.1's defaults, in place. */
int mmp_ftfy_fix_text(mmp_ustr_t *s);
/* Python 3.11's html.unescape(text), in place. */
int mmp_html_unescape(mmp_ustr_t *s);

#endif
