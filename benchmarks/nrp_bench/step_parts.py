"""The parts of ``NRPModule.training_step``, each a re-runnable callable on a prepared module, so that
each can be timed on its own."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import torch

from nrp_bench.profiles import Variant
from nrp_lightning.lit_module import NRPModule
from nrp_lightning.train import build_module


def autocast(variant: Variant, device: torch.device):
    """The autocast Lightning's bf16-mixed precision plugin enters around training_step."""
    if variant.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepared_module(cfg, device: torch.device) -> NRPModule:
    """The module as the Trainer would set it up: on the device, ``configure_model`` applied."""
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    module.configure_model()
    module.train()
    return module


@contextlib.contextmanager
def frozen(net: torch.nn.Module) -> Iterator[None]:
    """What ``toggle_optimizer`` does to the other optimizer's parameters during a network's step."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)


def step_parts(module: NRPModule, x: torch.Tensor, variant: Variant, device: torch.device) -> dict[str, tuple[Callable, bool]]:
    """The parts of ``training_step``, each a re-runnable callable, and whether it is summed.

    Summed parts cover the step's work once, in its order: F(x) (no grad), SSP with T steps,
    the generator update (purifier forward, Eq. 8 with its critic and feature terms, backward,
    Adam step), the critic update and the logged metrics. Breakdown parts (not summed) time pieces
    of those: one SSP iteration, the purifier network alone and the feature loss alone."""
    opt_purifier, opt_critic = module.configure_optimizers()
    x = module._prepare(x)
    with torch.no_grad(), autocast(variant, device):
        feat_clean = module.features(x)
    with autocast(variant, device):
        x_adv = module.find_adversaries(x)
        with torch.no_grad():
            purified_fixed = module.purifier(x_adv)

    def features_clean():
        with torch.no_grad(), autocast(variant, device):
            return module.features(x)

    def ssp():
        with autocast(variant, device):
            return module.find_adversaries(x)

    attack_one = dataclasses.replace(module.attack, steps=1) if dataclasses.is_dataclass(module.attack) else None

    def ssp_one_iteration():
        attack, module.attack = module.attack, attack_one
        try:
            return ssp()
        finally:
            module.attack = attack

    def generator_step():
        with frozen(module.critic):
            with autocast(variant, device):
                purified = module.purifier(x_adv)
                terms = module.purifier_loss(x, purified, feat_clean)
            opt_purifier.zero_grad(set_to_none=True)
            terms["loss_purifier"].backward()
            opt_purifier.step()

    def critic_step():
        with frozen(module.purifier):
            with autocast(variant, device):
                loss = module.critic_loss(x, purified_fixed)
            opt_critic.zero_grad(set_to_none=True)
            loss.backward()
            opt_critic.step()

    def metrics():
        with torch.no_grad(), autocast(variant, device):
            return module.purification_metrics(x, x_adv, purified_fixed, feat_clean)

    def purifier_fwd_bwd():
        with frozen(module.critic):
            with autocast(variant, device):
                out = module.purifier(x_adv)
            out.float().mean().backward()

    def feature_loss_fwd_bwd():
        from nrp_lightning.losses import feature_loss

        purified = purified_fixed.detach().requires_grad_(True)
        with autocast(variant, device):
            loss = feature_loss(module.features(purified), feat_clean)
        loss.backward()

    parts = {
        "features_clean": (features_clean, True),
        "ssp": (ssp, True),
        "generator_step": (generator_step, True),
        "critic_step": (critic_step, True),
        "metrics": (metrics, True),
        "purifier_fwd_bwd": (purifier_fwd_bwd, False),
        "feature_loss_fwd_bwd": (feature_loss_fwd_bwd, False),
    }
    if attack_one is not None:
        parts["ssp_1_iteration"] = (ssp_one_iteration, False)
    return parts
