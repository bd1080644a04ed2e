# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
MMP_PLUGIN([processors], [image_resize], [test x$have_png = xyes], [libpng not found], [PIL-exact resize, crops, to_float and normalize of uint8 images])
MMP_PLUGIN([datasets], [flintstones], [test x$have_hdf5 = xyes && test x$have_png = xyes], [libhdf5 or libpng not found], [FlintstonesSV stories from AR-LDM's HDF5 file])
MMP_PLUGIN([datasets], [pororo], [test x$have_hdf5 = xyes && test x$have_png = xyes], [libhdf5 or libpng not found], [PororoSV stories from AR-LDM's HDF5 file])
MMP_PLUGIN([datasets], [vistsis], [test x$have_hdf5 = xyes && test x$have_png = xyes], [libhdf5 or libpng not found], [VIST stories with story-in-sequence captions])
MMP_PLUGIN([datasets], [vistdii], [test x$have_hdf5 = xyes && test x$have_png = xyes], [libhdf5 or libpng not found], [VIST stories with description-in-isolation captions])
