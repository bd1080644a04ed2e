# plugins/plugins.m4 - the plugin list. One MMP_PLUGIN line per plugin:
# MMP_PLUGIN(kind, name, dependencies-ok test, reason when not, description)
MMP_PLUGIN([schedulers], [ddpm], [true], [], [DDPM ancestral sampler (diffusers DDPMScheduler)])
MMP_PLUGIN([schedulers], [ddim], [true], [], [DDIM sampler (diffusers DDIMScheduler)])
MMP_PLUGIN([schedulers], [pndm], [true], [], [PNDM/PLMS sampler (diffusers PNDMScheduler)])
MMP_PLUGIN([schedulers], [euler], [true], [], [Euler sampler (diffusers EulerDiscreteScheduler)])
MMP_PLUGIN([schedulers], [euler_ancestral], [true], [], [ancestral Euler sampler (diffusers EulerAncestralDiscreteScheduler)])
MMP_PLUGIN([schedulers], [dpmpp_2m], [true], [], [DPM-Solver++ multistep (diffusers DPMSolverMultistepScheduler)])
