# tests/gen_schedulers.py - golden data for the scheduler plugins from diffusers 0.19.3.
#
# Run in the reference environment (../shared/REFERENCE.md):
#   PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_schedulers.py
#
# For every case it writes, under tests/fixtures/schedulers/:
#   NAME.cfg              `scheduler = { name = ...; <diffusers keys> };`
#   NAME.in.safetensors   sample [shape], model_outputs [N, ...], optional noise
#                         [N, ...], optional x0 / add_noise_noise /
#                         add_noise_timesteps (i64)
#   NAME.out.safetensors  timesteps (i64 [N], rounded), samples [N, ...],
#                         pred_original_samples [N, ...] where diffusers
#                         defines it, init_noise_sigma (f64 [1]), noisy when
#                         add_noise inputs exist; for euler/euler_ancestral
#                         also model_timesteps (f64 [N], the exact fractional
#                         value diffusers gives the model) and model_inputs
#                         [N, ...] (scale_model_input of the sample before
#                         call i; the others scale by 1)
# and cases.list (one case name a line), plus timesteps.safetensors: the
# timestep lists of each scheduler for many step counts (name
# "<plugin>.<variant>.<N>"), and schedules.safetensors: sqrt(alphas_cumprod)
# of several beta schedules (add_noise of ones and zeros at every step).
#
# The model outputs are random: the schedulers are linear in them, so random
# data exercises every coefficient. Noise for stochastic steps is either
# given (the `noise` input, injected by replacing randn_tensor in the
# scheduler's module) or drawn from torch.Generator().manual_seed(seed), in
# which case the cfg carries `seed` and `rng = "torch"` and no noise input is
# written.
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       PNDMScheduler)
from diffusers.schedulers import (scheduling_ddpm, scheduling_dpmsolver_multistep,
                                  scheduling_euler_ancestral_discrete,
                                  scheduling_euler_discrete)

assert diffusers.__version__ == "0.19.3", diffusers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "schedulers")

CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
# modules whose randn_tensor a step calls
RANDN_MODULES = {
    "ddpm": scheduling_ddpm,
    "euler": scheduling_euler_discrete,
    "euler_ancestral": scheduling_euler_ancestral_discrete,
    "dpmpp_2m": scheduling_dpmsolver_multistep,
}
# plugins that return pred_original_sample
HAS_PRED_ORIGINAL = {"ddpm", "ddim", "euler", "euler_ancestral"}
# plugin keys that are step() arguments in diffusers
STEP_KEYS = {
    "ddim": ["eta", "use_clipped_model_output"],
    "euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
}
STOCHASTIC = {"ddpm", "euler_ancestral"}

ARLDM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             num_train_timesteps=1000)
ARLDM_EXTRA = {
    "pndm": dict(skip_prk_steps=True),
    "ddim": dict(clip_sample=False, set_alpha_to_one=True),
}


def shape_for(n):
    """Small sample shapes so the fixtures stay small."""
    if n <= 25:
        return [1, 2, 3, 4]
    if n <= 50:
        return [1, 2, 2, 3]
    return [1, 1, 2, 2]


def cfg_literal(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        if "." not in r and "e" not in r and "inf" not in r:
            r += ".0"
        return r
    if isinstance(v, str):
        return '"%s"' % v
    raise TypeError(v)


class Case:
    def __init__(self, name, plugin, n, kwargs, step_kwargs=None, shape=None,
                 seed=None, add_noise=True, cfg_extra=None, scale=1.0,
                 out_channels_factor=1):
        self.name = name
        self.plugin = plugin
        self.n = n
        self.kwargs = kwargs
        self.step_kwargs = step_kwargs or {}
        self.shape = shape or shape_for(n)
        self.seed = seed
        self.add_noise = add_noise
        self.cfg_extra = cfg_extra or {}
        self.scale = scale
        self.out_channels_factor = out_channels_factor


def make_cases():
    cases = []
    for plugin in CLASSES:
        for setting in ("arldm", "default"):
            for n in (10, 25, 50, 250):
                for pred in ("epsilon", "v_prediction"):
                    kw = {}
                    if setting == "arldm":
                        kw.update(ARLDM)
                        kw.update(ARLDM_EXTRA.get(plugin, {}))
                    if pred != "epsilon":
                        kw["prediction_type"] = pred
                    name = "%s_%s_%d_%s" % (plugin, setting, n,
                                            "eps" if pred == "epsilon" else "v")
                    cases.append(Case(name, plugin, n, kw))
    # DDIM with eta = 1 (noise given) and seeded eta = 1 / eta = 0.5
    for n in (10, 25, 50, 250):
        kw = dict(ARLDM, **ARLDM_EXTRA["ddim"])
        cases.append(Case("ddim_arldm_%d_eps_eta1" % n, "ddim", n, kw,
                          step_kwargs=dict(eta=1.0)))
    cases.append(Case("ddim_default_50_v_eta1", "ddim", 50,
                      dict(prediction_type="v_prediction"), step_kwargs=dict(eta=1.0)))
    cases.append(Case("ddim_arldm_25_eps_eta1_seeded", "ddim", 25,
                      dict(ARLDM, **ARLDM_EXTRA["ddim"]), step_kwargs=dict(eta=1.0), seed=1234))
    cases.append(Case("ddim_sd_50_eta05_clipped", "ddim", 50,
                      dict(ARLDM, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                      step_kwargs=dict(eta=0.5, use_clipped_model_output=True)))
    cases.append(Case("ddim_zero_snr_trailing_25_v", "ddim", 25,
                      dict(ARLDM, clip_sample=False, rescale_betas_zero_snr=True,
                           timestep_spacing="trailing", prediction_type="v_prediction")))
    cases.append(Case("ddim_linspace_cos_25_sample", "ddim", 25,
                      dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace",
                           prediction_type="sample", clip_sample_range=1.5)))
    cases.append(Case("ddim_threshold_10", "ddim", 10,
                      dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
                      shape=[2, 2, 3, 4], scale=3.0))
    cases.append(Case("ddim_trained_betas_st_10", "ddim", 10, dict(clip_sample=False),
                      cfg_extra=dict(trained_betas_file="st")))
    cases.append(Case("ddim_trained_betas_txt_10", "ddim", 10, dict(clip_sample=False),
                      cfg_extra=dict(trained_betas_file="txt")))
    # DDPM variants
    cases.append(Case("ddpm_fixed_small_log_25", "ddpm", 25, dict(variance_type="fixed_small_log")))
    cases.append(Case("ddpm_fixed_large_25", "ddpm", 25, dict(ARLDM, variance_type="fixed_large",
                                                             clip_sample=False)))
    cases.append(Case("ddpm_learned_range_25", "ddpm", 25, dict(variance_type="learned_range"),
                      out_channels_factor=2))
    cases.append(Case("ddpm_learned_10", "ddpm", 10, dict(variance_type="learned"),
                      out_channels_factor=2, scale=1.0))
    cases.append(Case("ddpm_sample_clip2_25", "ddpm", 25,
                      dict(prediction_type="sample", clip_sample_range=2.0)))
    cases.append(Case("ddpm_threshold_10", "ddpm", 10,
                      dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
                      shape=[2, 2, 3, 4], scale=3.0))
    cases.append(Case("ddpm_sigmoid_linspace_25", "ddpm", 25,
                      dict(beta_schedule="sigmoid", timestep_spacing="linspace")))
    cases.append(Case("ddpm_trailing_25", "ddpm", 25, dict(ARLDM, timestep_spacing="trailing")))
    cases.append(Case("ddpm_seeded_10", "ddpm", 10, dict(ARLDM), seed=77))
    cases.append(Case("ddpm_1000", "ddpm", 1000, dict(), shape=[1, 1, 1, 2]))
    # PNDM variants
    cases.append(Case("pndm_arldm_prk_50", "pndm", 50, dict(ARLDM)))
    cases.append(Case("pndm_sd_50", "pndm", 50,
                      dict(ARLDM, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)))
    cases.append(Case("pndm_linspace_25", "pndm", 25, dict(ARLDM, skip_prk_steps=True,
                                                         timestep_spacing="linspace")))
    cases.append(Case("pndm_trailing_prk_25", "pndm", 25, dict(timestep_spacing="trailing")))
    cases.append(Case("pndm_cos_10_v", "pndm", 10, dict(beta_schedule="squaredcos_cap_v2",
                                                      prediction_type="v_prediction")))
    # Euler variants
    cases.append(Case("euler_sd_leading_25", "euler", 25,
                      dict(ARLDM, timestep_spacing="leading", steps_offset=1)))
    cases.append(Case("euler_karras_25", "euler", 25, dict(ARLDM, use_karras_sigmas=True)))
    cases.append(Case("euler_karras_10_v", "euler", 10, dict(use_karras_sigmas=True,
                                                            prediction_type="v_prediction")))
    cases.append(Case("euler_trailing_10", "euler", 10, dict(ARLDM, timestep_spacing="trailing")))
    cases.append(Case("euler_log_linear_10", "euler", 10, dict(ARLDM, interpolation_type="log_linear")))
    cases.append(Case("euler_churn_25", "euler", 25, dict(ARLDM),
                      step_kwargs=dict(s_churn=0.5, s_tmin=0.5, s_tmax=8.0, s_noise=1.003)))
    cases.append(Case("euler_sample_10", "euler", 10, dict(prediction_type="sample")))
    # Euler ancestral variants
    cases.append(Case("euler_ancestral_seeded_25", "euler_ancestral", 25, dict(ARLDM), seed=5))
    cases.append(Case("euler_ancestral_leading_25", "euler_ancestral", 25,
                      dict(ARLDM, timestep_spacing="leading", steps_offset=1)))
    cases.append(Case("euler_ancestral_trailing_10_v", "euler_ancestral", 10,
                      dict(timestep_spacing="trailing", prediction_type="v_prediction")))
    # DPM-Solver variants
    cases.append(Case("dpmpp_2m_karras_25", "dpmpp_2m", 25, dict(ARLDM, use_karras_sigmas=True)))
    cases.append(Case("dpmpp_2m_karras_10_v", "dpmpp_2m", 10, dict(use_karras_sigmas=True,
                                                                  prediction_type="v_prediction")))
    cases.append(Case("dpmpp_3m_25", "dpmpp_2m", 25, dict(ARLDM, solver_order=3)))
    cases.append(Case("dpmpp_3m_10_nolof", "dpmpp_2m", 10, dict(solver_order=3, lower_order_final=False)))
    cases.append(Case("dpm_2m_25", "dpmpp_2m", 25, dict(ARLDM, algorithm_type="dpmsolver")))
    cases.append(Case("dpm_3m_10_v", "dpmpp_2m", 10, dict(algorithm_type="dpmsolver", solver_order=3,
                                                         prediction_type="v_prediction")))
    cases.append(Case("dpmpp_2m_heun_25", "dpmpp_2m", 25, dict(ARLDM, solver_type="heun")))
    cases.append(Case("dpm_2m_heun_10_sample", "dpmpp_2m", 10, dict(algorithm_type="dpmsolver",
                                                                   solver_type="heun",
                                                                   prediction_type="sample")))
    cases.append(Case("dpmpp_2m_sde_25", "dpmpp_2m", 25, dict(ARLDM, algorithm_type="sde-dpmsolver++")))
    cases.append(Case("dpmpp_2m_sde_heun_10_seeded", "dpmpp_2m", 10,
                      dict(ARLDM, algorithm_type="sde-dpmsolver++", solver_type="heun"), seed=99))
    cases.append(Case("dpm_2m_sde_10", "dpmpp_2m", 10, dict(algorithm_type="sde-dpmsolver")))
    cases.append(Case("dpmpp_2m_threshold_10", "dpmpp_2m", 10,
                      dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
                      shape=[2, 2, 3, 4], scale=3.0))
    cases.append(Case("dpm_2m_threshold_10", "dpmpp_2m", 10,
                      dict(algorithm_type="dpmsolver", thresholding=True,
                           dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
                      shape=[2, 2, 3, 4], scale=3.0))
    cases.append(Case("dpmpp_2m_leading_25", "dpmpp_2m", 25,
                      dict(ARLDM, timestep_spacing="leading", steps_offset=1)))
    cases.append(Case("dpmpp_2m_trailing_10", "dpmpp_2m", 10, dict(timestep_spacing="trailing")))
    cases.append(Case("dpmpp_2m_lambda_clip_25", "dpmpp_2m", 25,
                      dict(ARLDM, lambda_min_clipped=-2.5)))
    cases.append(Case("dpmpp_2m_order1_10", "dpmpp_2m", 10, dict(solver_order=1)))
    return cases


def tensor_gen(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float32)


def run_case(case, idx):
    cls = CLASSES[case.plugin]
    kwargs = dict(case.kwargs)
    cfg = {}
    trained = case.cfg_extra.get("trained_betas_file")
    if trained:
        betas = (torch.linspace(0.0001 ** 0.5, 0.03 ** 0.5, 1000, dtype=torch.float64) ** 2
                 + 1e-5 * torch.sin(torch.arange(1000, dtype=torch.float64)))
        betas = betas.clamp(min=1e-5).numpy()
        if trained == "st":
            fname = case.name + ".betas.safetensors"
            save_file({"betas": torch.from_numpy(betas.copy())}, os.path.join(OUT, fname))
        else:
            fname = case.name + ".betas.txt"
            with open(os.path.join(OUT, fname), "w") as f:
                f.write("# betas for %s, one per line (written by tests/gen_schedulers.py)\n" % case.name)
                for b in betas:
                    f.write(repr(float(b)) + "\n")
        kwargs["trained_betas"] = betas.tolist()
        cfg["trained_betas"] = fname
    sched = cls(**kwargs)
    sched.set_timesteps(case.n)
    timesteps = sched.timesteps
    n_calls = len(timesteps)

    rnd = tensor_gen(1000 + idx)
    shape = list(case.shape)
    sample = rnd(*shape) * case.scale
    out_shape = list(shape)
    out_shape[1] *= case.out_channels_factor
    model_outputs = rnd(n_calls, *out_shape)
    if case.out_channels_factor == 2:
        # the predicted-variance half lies in [-1, 1] as in models that learn it
        c = shape[1]
        if case.kwargs.get("variance_type") == "learned":
            model_outputs[:, :, c:] = model_outputs[:, :, c:].abs() * 0.01 + 1e-3
        else:
            model_outputs[:, :, c:] = torch.tanh(model_outputs[:, :, c:])
    stochastic = (case.plugin in STOCHASTIC or case.step_kwargs.get("eta", 0) > 0
                  or case.step_kwargs.get("s_churn", 0) > 0
                  or case.kwargs.get("algorithm_type", "").startswith("sde"))
    noise = None
    if stochastic and case.seed is None:
        noise = rnd(n_calls, *shape)

    generator = None
    if case.seed is not None:
        generator = torch.Generator().manual_seed(case.seed)
        cfg["seed"] = case.seed
        cfg["rng"] = "torch"

    state = {"i": 0}
    mod = RANDN_MODULES.get(case.plugin)
    orig_randn = mod.randn_tensor if mod else None
    if mod is not None and noise is not None:
        def fake_randn(shp, generator=None, device=None, dtype=None, layout=None):
            assert list(shp) == shape, (shp, shape)
            return noise[state["i"]].clone()
        mod.randn_tensor = fake_randn

    x = sample.clone()
    samples, preds, inputs = [], [], []
    try:
        for i, t in enumerate(timesteps):
            state["i"] = i
            inputs.append(sched.scale_model_input(x, t).clone())
            kw = dict(case.step_kwargs)
            if case.plugin == "ddim" and kw.get("eta", 0) > 0:
                if noise is not None:
                    kw["variance_noise"] = noise[i]
                else:
                    kw["generator"] = generator
            elif case.plugin in ("ddpm", "euler", "euler_ancestral", "dpmpp_2m"):
                kw["generator"] = generator
            out = sched.step(model_outputs[i], t, x, **kw)
            x = out.prev_sample
            samples.append(x.clone())
            if case.plugin in HAS_PRED_ORIGINAL:
                preds.append(out.pred_original_sample.clone())
    finally:
        if mod is not None:
            mod.randn_tensor = orig_randn

    tin = {"sample": sample.contiguous(), "model_outputs": model_outputs.contiguous()}
    if noise is not None:
        tin["noise"] = noise.contiguous()
    tout = {
        "timesteps": torch.tensor([int(round(float(t))) for t in timesteps], dtype=torch.int64),
        "samples": torch.stack(samples).to(torch.float32).contiguous(),
        "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float64),
    }
    if case.plugin in ("euler", "euler_ancestral"):
        # the only schedulers with fractional timesteps and a non-identity
        # scale_model_input
        tout["model_timesteps"] = torch.tensor([float(t) for t in timesteps], dtype=torch.float64)
        tout["model_inputs"] = torch.stack(inputs).to(torch.float32).contiguous()
    if preds:
        tout["pred_original_samples"] = torch.stack(preds).to(torch.float32).contiguous()
    if case.add_noise:
        # timesteps for add_noise: random training steps, or (for the sigma
        # schedulers, which look the timestep up in their schedule) integral
        # entries of the schedule
        if case.plugin in ("euler", "euler_ancestral"):
            ints = [float(t) for t in timesteps if float(t) == round(float(t))]
            pick = [ints[0], ints[-1], ints[len(ints) // 2]] if ints else []
        else:
            g = torch.Generator().manual_seed(7 + idx)
            T = sched.config.num_train_timesteps
            pick = torch.randint(0, T, (3,), generator=g).tolist()
        if pick:
            b = len(pick)
            x0 = rnd(b, *shape[1:])
            nz = rnd(b, *shape[1:])
            if case.plugin in ("euler", "euler_ancestral"):
                ts_arg = torch.tensor(pick, dtype=torch.float64)
            else:
                ts_arg = torch.tensor(pick, dtype=torch.int64)
            noisy = sched.add_noise(x0, nz, ts_arg)
            tin["x0"] = x0.contiguous()
            tin["add_noise_noise"] = nz.contiguous()
            tin["add_noise_timesteps"] = torch.tensor([int(p) for p in pick], dtype=torch.int64)
            tout["noisy"] = noisy.to(torch.float32).contiguous()

    for k, v in tout.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), (case.name, k)

    # the cfg: constructor kwargs + step kwargs + extras, diffusers' names
    for k, v in kwargs.items():
        if k == "trained_betas":
            continue
        cfg[k] = v
    for k, v in case.step_kwargs.items():
        cfg[k] = v
    lines = ["# %s: written by tests/gen_schedulers.py (diffusers %s)" % (case.name, diffusers.__version__),
             "scheduler = {", '  name = "%s";' % case.plugin,
             "  num_inference_steps = %d;" % case.n]
    for k in sorted(cfg):
        lines.append("  %s = %s;" % (k, cfg_literal(cfg[k])))
    lines.append("};")
    with open(os.path.join(OUT, case.name + ".cfg"), "w") as f:
        f.write("\n".join(lines) + "\n")
    save_file(tin, os.path.join(OUT, case.name + ".in.safetensors"))
    save_file(tout, os.path.join(OUT, case.name + ".out.safetensors"),
              metadata={"generator": "tests/gen_schedulers.py, diffusers " + diffusers.__version__})


TIMESTEP_NS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 20, 23, 25, 30, 33, 40,
               49, 50, 51, 64, 77, 100, 250]


def timestep_table():
    """Timesteps of each plugin for many step counts and spacings."""
    variants = []
    for plugin in CLASSES:
        for spacing in ("leading", "linspace", "trailing"):
            variants.append((plugin, spacing, dict(timestep_spacing=spacing)))
    variants.append(("pndm", "skip_prk_leading", dict(skip_prk_steps=True)))
    variants.append(("pndm", "skip_prk_offset1", dict(skip_prk_steps=True, steps_offset=1)))
    variants.append(("ddim", "leading_offset1", dict(steps_offset=1)))
    variants.append(("euler", "karras", dict(use_karras_sigmas=True, **ARLDM)))
    variants.append(("dpmpp_2m", "karras", dict(use_karras_sigmas=True, **ARLDM)))
    variants.append(("dpmpp_2m", "lambda_clip", dict(lambda_min_clipped=-3.0, **ARLDM)))
    table = {}
    for plugin, vname, kw in variants:
        for n in TIMESTEP_NS:
            sched = CLASSES[plugin](**kw)
            if plugin == "pndm" and not kw.get("skip_prk_steps") and n < 4:
                continue  # diffusers' PRK warm-up needs 4 steps
            try:
                sched.set_timesteps(n)
            except Exception as e:  # noqa
                print("skip", plugin, vname, n, e, file=sys.stderr)
                continue
            ts = sched.timesteps
            if plugin in ("euler", "euler_ancestral"):
                table["%s.%s.%d" % (plugin, vname, n)] = torch.tensor([float(t) for t in ts],
                                                                      dtype=torch.float64)
            else:
                table["%s.%s.%d" % (plugin, vname, n)] = torch.tensor([int(t) for t in ts],
                                                                      dtype=torch.int64)
    save_file(table, os.path.join(OUT, "timesteps.safetensors"))
    return len(table)


SCHEDULE_VARIANTS = [
    # (name, plugin, kwargs): sqrt(alphas_cumprod) as add_noise computes it
    ("linear", "ddim", dict()),
    ("scaled_linear", "ddim", dict(ARLDM)),
    ("squaredcos_cap_v2", "ddim", dict(beta_schedule="squaredcos_cap_v2")),
    ("sigmoid", "ddpm", dict(beta_schedule="sigmoid")),
    ("zero_snr", "ddim", dict(ARLDM, rescale_betas_zero_snr=True, prediction_type="v_prediction")),
    ("linear_500", "pndm", dict(num_train_timesteps=500, beta_start=0.0002, beta_end=0.03)),
]


def schedule_table():
    """sqrt(alphas_cumprod[t]) for every t: add_noise(ones, zeros, arange(T))."""
    table = {}
    for name, plugin, kw in SCHEDULE_VARIANTS:
        sched = CLASSES[plugin](**kw)
        T = sched.config.num_train_timesteps
        x0 = torch.ones(T, 1)
        noisy = sched.add_noise(x0, torch.zeros(T, 1), torch.arange(T))
        table[name] = noisy.reshape(T).contiguous()
    save_file(table, os.path.join(OUT, "schedules.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    cases = make_cases()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names)
    for i, case in enumerate(cases):
        run_case(case, i)
    with open(os.path.join(OUT, "cases.list"), "w") as f:
        f.write("# scheduler golden cases (written by tests/gen_schedulers.py)\n")
        for n in names:
            f.write(n + "\n")
    k = timestep_table()
    schedule_table()
    print("%d cases, %d timestep lists -> %s" % (len(cases), k, OUT))


if __name__ == "__main__":
    main()
