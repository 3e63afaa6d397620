"""The NRP min-max game (Algorithm 2) as a LightningModule with manual optimization.

Each training step: SSP adversaries of the batch (gradients through F only), purify, one
purifier step on ``alpha·L_adv + gamma·L_img + lambda·L_feat`` (Eq. 8), one critic step.
What a run carries besides its weights (every rank's random state, the guard that skips
non-finite steps) lives in ``training_state.py``.

Note on step counts: with two optimizers stepped by hand, Lightning's ``global_step`` counts
*optimizer* steps, i.e. two per iteration; configs therefore set ``trainer.max_steps`` to
``2 * steps`` (see ``conf/train.yaml``) and we log ``iteration`` separately.
"""
from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.config import BadConfigError, is_number
from nrp_lightning.losses import ALPHA, GAMMA, GAN_LOSSES, LAMBDA, PIXEL_DISTANCES, feature_distance, feature_loss, pixel_loss
from nrp_lightning.training_state import DivergenceError, DivergenceGuard, RNGStates

__all__ = ["NRPModule", "DivergenceError", "psnr"]

FUSED_ADAM_DEVICES = ("cuda", "cpu")  # fused=True Adam kernels (CPU: 35x faster than foreach for 16.7M params)
LR_SCHEDULES = ("constant", "cosine")
Attack = Callable[[torch.Tensor, nn.Module], torch.Tensor]  # (x in [0,1], features) -> x_adv


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of ``(B,3,H,W)`` images in [0, 1] (``a`` clamped first), over the whole batch.

    Plain tensor ops on the inputs' device: torchmetrics' functional PSNR builds a CPU scalar and
    copies it to the device, a host-device synchronisation in every training step on CUDA."""
    return -10.0 * torch.log10(F.mse_loss(a.detach().float().clamp(0, 1), b.float()))


class NRPModule(pl.LightningModule):
    """Purifier P, critic C, frozen feature extractor F and an attack producing x' from x.

    Args:
        purifier, critic, features: the three networks (``features`` stays frozen).
        attack: ``attack(x, features) -> x_adv``; SSP for NRP, other inputs for ablations.
        val_attack: the attack of validation and the final report (default ``attack``); SSP for
            every ablation, so that their numbers compare.
        alpha, gamma, lam: weights of L_adv, L_img, L_feat (paper: 5e-3, 1e-2, 1).
        gan_loss: ``ragan`` (paper) or ``vanilla``.
        pixel_distance: L_img as ``mse`` (the usual reading) or ``l2`` (the per-image norm of Eq. 6).
        lr_purifier, lr_critic, betas: Adam settings (paper: 1e-4 for both).
        weak_fraction: share of each batch whose perturbation ``x' - x`` is scaled by ``u ~ U(0, 1)``
            (one ``u`` per image; 0 = the paper: every input at full strength). Inputs from clean
            to full strength teach the purifier to leave what is not perturbed alone.
        lr_schedule: ``constant`` (paper) or ``cosine``: both learning rates decay along a half
            cosine to zero over ``schedule_iterations`` (not in the paper; for short CPU runs).
        channels_last: NHWC memory format for the three networks and the inputs.
        compile: ``torch.compile`` the three networks (in place: state-dict keys do not change).
        fused_adam: fused Adam kernels when every parameter is on a device torch has them for
            (CUDA and, since torch 2.4, CPU).
        seed: per-rank seed for SSP random starts and crops (``seed + global_rank``).
        reference_steps: at the first validation of a run, the feature distortion that ``attack``
            and ``val_attack`` reach on the first validation batch is logged as a share of the
            authors' attack (SSP with this many constant steps of 2.55/255), as
            ``val/attack_share`` and ``val/val_attack_share``: how strong the training inputs are.
            0 turns it off.
        divergence_guard: a purifier or critic step whose loss or gradient norm is not finite is
            skipped (weights and Adam state untouched), counted (``train/nonfinite_steps``) and
            logged beside both gradient norms (``train/grad_norm_purifier``, ``_critic``);
            ``training_state.DivergenceGuard``.
        max_nonfinite_steps: more iterations in a row than this with a skipped step stop the run
            with ``DivergenceError``; the checkpoints hold the last finite weights.
    """

    def __init__(self, purifier: nn.Module, critic: nn.Module, features: nn.Module, attack: Attack,
                 val_attack: Attack | None = None, alpha: float = ALPHA, gamma: float = GAMMA, lam: float = LAMBDA, gan_loss: str = "ragan", pixel_distance: str = "mse",
                 lr_purifier: float = 1e-4, lr_critic: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weak_fraction: float = 0.0, lr_schedule: str = "constant", schedule_iterations: int | None = None, channels_last: bool = False, compile: bool = False, fused_adam: bool = True, seed: int = 0,
                 reference_steps: int = 100, divergence_guard: bool = True, max_nonfinite_steps: int = 30) -> None:
        super().__init__()
        if gan_loss not in GAN_LOSSES:
            raise BadConfigError(f"gan_loss must be one of {sorted(GAN_LOSSES)}, got {gan_loss!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise BadConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if lr_schedule == "cosine" and not (schedule_iterations or 0) > 0:
            raise BadConfigError(f"lr_schedule=cosine needs schedule_iterations > 0, got {schedule_iterations}")
        if pixel_distance not in PIXEL_DISTANCES:
            raise BadConfigError(f"pixel_distance must be one of {PIXEL_DISTANCES}, got {pixel_distance!r}")
        if not (is_number(weak_fraction) and 0.0 <= weak_fraction <= 1.0):
            raise BadConfigError(f"weak_fraction must be in [0, 1], got {weak_fraction}")
        if not (is_number(max_nonfinite_steps) and max_nonfinite_steps >= 1):
            raise BadConfigError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        if not (is_number(reference_steps) and reference_steps >= 0):
            raise BadConfigError(f"reference_steps must be >= 0 (0: off), got {reference_steps}")
        weights = {"alpha": alpha, "gamma": gamma, "lam": lam}
        if not all(is_number(w) and w >= 0 for w in weights.values()):
            raise BadConfigError("loss weights must be numbers >= 0, got "
                                 + " ".join(f"{name}={w!r}" for name, w in weights.items()))
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["purifier", "critic", "features", "attack", "val_attack"])
        self.purifier, self.critic, self.features, self.attack = purifier, critic, features, attack
        self.val_attack = val_attack if val_attack is not None else attack
        self.generator_gan_loss, self.critic_gan_loss = GAN_LOSSES[gan_loss]
        self.rng = RNGStates()
        self.guard = DivergenceGuard(divergence_guard, max_nonfinite_steps)
        self._attack_shares: dict[str, torch.Tensor] | None = None  # computed once a run (F is frozen)

    # ----------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.hparams.channels_last:
            for net in self.networks():
                net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            for net in self.networks():
                net.compile()

    def networks(self) -> list[nn.Module]:
        """P, C and F."""
        return [self.purifier, self.critic, self.features]

    def configure_optimizers(self):
        def adam(params, lr):
            params = [p for p in params if p.requires_grad]
            fused = self.hparams.fused_adam and all(p.device.type in FUSED_ADAM_DEVICES for p in params)
            return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas), fused=fused or None)
        optimizers = [adam(self.purifier.parameters(), self.hparams.lr_purifier), adam(self.critic.parameters(), self.hparams.lr_critic)]
        if self.hparams.lr_schedule == "constant":
            return optimizers
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.schedule_iterations) for opt in optimizers]
        return optimizers, schedulers

    def on_fit_start(self) -> None:
        self.rng.start(self.hparams.seed + self.global_rank)  # or the state a checkpoint brought

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.rng.save(checkpoint)
        self.guard.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rng.load(checkpoint, rank=self.global_rank if self._trainer is not None else 0)
        self.guard.load(checkpoint)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # ------------------------------------------------------- Algorithm 2 parts
    def find_adversaries(self, x: torch.Tensor) -> torch.Tensor:
        """Line 3: x' from x (SSP in NRP; Gaussian noise or FGSM in the ablations), then, with
        ``weak_fraction``, some perturbations weakened (still inside the budget and [0, 1])."""
        x_adv = self.attack(x, self.features)
        if self.hparams.weak_fraction > 0:
            b = x.shape[0]
            weak = torch.rand(b, device=x.device) < self.hparams.weak_fraction
            strength = torch.where(weak, torch.rand(b, device=x.device), torch.ones(b, device=x.device))
            x_adv = x + strength.view(b, 1, 1, 1) * (x_adv - x)
        return x_adv

    def purifier_loss(self, x: torch.Tensor, purified: torch.Tensor, feat_clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lines 4-5: Eq. 8 and its three terms. The critic sees real images without gradient."""
        hp = self.hparams
        logits_real = self.critic(x).detach()
        l_adv = self.generator_gan_loss(self.critic(purified), logits_real) if hp.alpha > 0 else purified.new_zeros(())
        l_img = pixel_loss(purified, x, hp.pixel_distance)
        l_feat = feature_loss(self.features(purified), feat_clean) if hp.lam > 0 else purified.new_zeros(())
        loss = hp.alpha * l_adv + hp.gamma * l_img + hp.lam * l_feat
        return {"loss_purifier": loss, "loss_adv": l_adv, "loss_img": l_img, "loss_feat": l_feat}

    def critic_loss(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """Line 6: the critic learns to tell x from P(x')."""
        return self.critic_gan_loss(self.critic(x), self.critic(purified.detach()))

    # ------------------------------------------------------------------ steps
    def training_step(self, x: torch.Tensor, batch_idx: int) -> None:
        """Algorithm 2, one iteration: adversaries, purify, a purifier step, a critic step, log."""
        opt_purifier, opt_critic = self.optimizers()
        x = self._prepare(x)
        with torch.no_grad():
            feat_clean = self.features(x)
        x_adv = self.find_adversaries(x)
        purified = self.purifier(x_adv)

        with self.toggled_optimizer(opt_purifier):
            terms = self.purifier_loss(x, purified, feat_clean)
            norm_purifier, bad_purifier = self.backward_and_step(opt_purifier, self.purifier, terms["loss_purifier"])
        with self.toggled_optimizer(opt_critic):
            loss_critic = self.critic_loss(x, purified)
            norm_critic, bad_critic = self.backward_and_step(opt_critic, self.critic, loss_critic)
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.guard.count(bad_purifier | bad_critic, self._trainer)

        with torch.no_grad():
            metrics = {f"train/{k}": v.detach() for k, v in terms.items()}
            metrics.update({"train/loss_critic": loss_critic.detach(), "train/grad_norm_purifier": norm_purifier,
                            "train/grad_norm_critic": norm_critic,
                            "train/nonfinite_steps": torch.as_tensor(self.guard.counts["total"], device=x.device).float()})
            metrics.update({f"train/{k}": v for k, v in self.purification_metrics(x, x_adv, purified, feat_clean).items()})
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False)
        self.log("train/loss", terms["loss_purifier"].detach(), prog_bar=True)

    def backward_and_step(self, optimizer, net: nn.Module, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward ``loss`` and step ``optimizer`` (skipped when not finite, ``training_state.DivergenceGuard``):
        ``(gradient norm of net, non-finite flag)``, both 0-dim device tensors."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        return self.guard.step(optimizer, net, loss)

    def purification_metrics(self, x: torch.Tensor, x_adv: torch.Tensor, purified: torch.Tensor,
                             feat_clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature distance (MAE in F) and PSNR against x, before and after purification."""
        purified = purified.clamp(0, 1)
        return {
            "feat_dist_adv": feature_distance(self.features(x_adv), feat_clean, "mae"),
            "feat_dist_purified": feature_distance(self.features(purified), feat_clean, "mae"),
            "psnr_adv": psnr(x_adv, x),
            "psnr_purified": psnr(purified, x),
        }

    def evaluate_purification(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``val_attack`` on ``x``, purify, measure: ``(x_adv, P(x_adv) clamped, metrics)``."""
        with torch.enable_grad():  # SSP needs input gradients (trainer.inference_mode must be false)
            x_adv = self.val_attack(x, self.features)
        with torch.no_grad():
            purified = self.purifier(x_adv).clamp(0, 1)
            metrics = self.purification_metrics(x, x_adv, purified, self.features(x))
        return x_adv, purified, metrics

    def attack_shares(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature distortion (SSP's MSE in F) of ``attack`` and ``val_attack`` on ``x`` as shares of
        the authors' attack's: ``{"attack_share": (), "val_attack_share": ()}``, 1.0 = as strong.

        The reference is SSP with ``reference_steps`` constant steps of 2.55/255 at the training
        attack's budget (16/255 if it has none). Inside ``fork_rng``: the random starts drawn here
        leave the run's random stream (and so a resumed run) as it was."""
        steps = self.hparams.reference_steps
        eps = getattr(self.attack, "eps", None)  # GNP's noise has eps=None (unprojected)
        eps = 16.0 if eps is None else float(eps)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            with torch.no_grad():
                feat_clean = self.features(x)

            def distortion(attack: Attack) -> torch.Tensor:
                torch.manual_seed(self.hparams.seed)  # the same random start for every attack
                x_adv = attack(x, self.features).detach()
                with torch.no_grad():
                    return feature_distance(self.features(x_adv), feat_clean, "mse")

            reference = distortion(SSP(eps=eps, step_size=2.55, steps=steps))
            return {"attack_share": distortion(self.attack) / reference,
                    "val_attack_share": distortion(self.val_attack) / reference}

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        x = self._prepare(x)
        if self.hparams.reference_steps and batch_idx == 0:
            if self._attack_shares is None:
                self._attack_shares = self.attack_shares(x)
            self.log_dict({f"val/{k}": v for k, v in self._attack_shares.items()}, on_epoch=True, sync_dist=True,
                          batch_size=x.shape[0])
        x_adv, purified, metrics = self.evaluate_purification(x)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, on_epoch=True, sync_dist=True,
                      batch_size=x.shape[0])
        return {"clean": x, "adversarial": x_adv, "purified": purified}
