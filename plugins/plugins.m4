# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
MMP_PLUGIN([tasks], [print_config], [true], [], [task that prints its merged configuration])
MMP_PLUGIN([tasks], [demo], [true], [], [small built-in task: denoises a toy signal with a scheduler])
MMP_PLUGIN([encoders], [clip_text], [true], [], [CLIP text encoder (transformers CLIPTextModel)])
MMP_PLUGIN([encoders], [vae], [true], [], [AutoencoderKL image <-> latent (diffusers)])
MMP_PLUGIN([models], [unet2d_condition], [true], [], [conditional UNet of Stable Diffusion 1.x/2.x (diffusers)])
MMP_PLUGIN([tasks], [txt2img], [test "x$have_png" = xyes], [libpng not found (apt-get install libpng-dev)], [text-to-image with a latent-diffusion model])
