# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
MMP_PLUGIN([processors], [clip_tokenizer], [test "x$have_utf8proc" = xyes], [libutf8proc not found], [CLIP byte-level BPE tokenizer (ftfy cleaning, added tokens)])
MMP_PLUGIN([processors], [bert_tokenizer], [test "x$have_utf8proc" = xyes], [libutf8proc not found], [BERT WordPiece tokenizer with BLIP's additions])
