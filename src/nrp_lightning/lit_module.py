"""The NRP min-max game (Algorithm 2) as a LightningModule with manual optimization.

Each training step: SSP adversaries of the batch (gradients through F only), purify, one
purifier step on ``alpha·L_adv + gamma·L_img + lambda·L_feat`` (Eq. 8), one critic step. An
option the paper does not have adds ``kappa·L_out``, a classifier's predictions on P(x') held to
those on x (``loss.kappa``, 0 by default), another ``detail·L_detail``, each patch's fine detail
held to x's (``loss.detail``, 0 by default).

Note on step counts: with two optimizers stepped by hand, Lightning's ``global_step`` counts
*optimizer* steps, i.e. two per iteration; configs therefore set ``trainer.max_steps`` to
``2 * steps`` (see ``conf/train.yaml``) and we log ``iteration`` separately.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.config import BadConfigError, is_number
from nrp_lightning.losses import (ALPHA, GAMMA, GAN_LOSSES, LAMBDA, PIXEL_DISTANCES, detail_loss, feature_distance,
                                  feature_loss, output_consistency_loss, pixel_loss)
from nrp_lightning.purify import dynamic_perturb


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for more steps in a row than allowed."""


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
            logged beside both gradient norms (``train/grad_norm_purifier``, ``_critic``). With
            fused Adam the skip happens on the device (the ``found_inf`` input GradScaler uses):
            no host-device sync; other optimizers read the flag on the host.
        max_nonfinite_steps: more iterations in a row than this with a skipped step stop the run
            with ``DivergenceError`` (checked every ``log_every_n_steps`` iterations, when the
            counters are read anyway); the checkpoints hold the last finite weights.
        kappa: weight of L_out (not in the paper; 0 = off): ``KL(f(x) || f(P(x')))`` of
            ``output_classifier`` f, frozen, ``(B,3,H,W)`` in [0,1] -> logits ``(B, K)``. L_feat
            holds one layer of F; this holds the prediction a classifier makes from the image.
        input_noise: sigma of dynamic inference's clipped Gaussian noise (``purify.dynamic_perturb``:
            [0, 1] units, bounded by 16/255) added to every purifier input x' in training, after
            ``weak_fraction`` (not in the paper; 0 = off). A purifier used with dynamic inference
            then sees in training the noisy inputs it is given at inference (0.05 there).
        detail: weight of L_detail (not in the paper; 0 = off): ``losses.detail_loss``, the mean
            |Laplacian RMS of P(x') - that of x| over 8 px patches, against the smoothing that the
            pixel and feature losses favour.
    """

    def __init__(self, purifier: nn.Module, critic: nn.Module, features: nn.Module, attack: Attack,
                 val_attack: Attack | None = None, alpha: float = ALPHA, gamma: float = GAMMA, lam: float = LAMBDA, gan_loss: str = "ragan", pixel_distance: str = "mse",
                 lr_purifier: float = 1e-4, lr_critic: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weak_fraction: float = 0.0, lr_schedule: str = "constant", schedule_iterations: int | None = None, channels_last: bool = False, compile: bool = False, fused_adam: bool = True, seed: int = 0,
                 reference_steps: int = 100, divergence_guard: bool = True, max_nonfinite_steps: int = 30,
                 kappa: float = 0.0, output_classifier: nn.Module | None = None, detail: float = 0.0,
                 input_noise: float = 0.0) -> None:
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
        if not (is_number(input_noise) and 0.0 <= input_noise <= 1.0):
            raise BadConfigError(f"input_noise must be in [0, 1] (a sigma in [0, 1] image units; 0: off), got {input_noise}")
        if not (is_number(max_nonfinite_steps) and max_nonfinite_steps >= 1):
            raise BadConfigError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        if not (is_number(reference_steps) and reference_steps >= 0):
            raise BadConfigError(f"reference_steps must be >= 0 (0: off), got {reference_steps}")
        weights = {"alpha": alpha, "gamma": gamma, "lam": lam, "kappa": kappa, "detail": detail}
        if not all(is_number(w) and w >= 0 for w in weights.values()):
            raise BadConfigError("loss weights must be numbers >= 0, got "
                                 + " ".join(f"{name}={w!r}" for name, w in weights.items()))
        if kappa > 0 and output_classifier is None:
            raise BadConfigError(f"loss.kappa={kappa} needs an output_classifier (the classifier whose predictions L_out holds)")
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["purifier", "critic", "features", "attack", "val_attack", "output_classifier"])
        self.purifier, self.critic, self.features, self.attack = purifier, critic, features, attack
        self.output_classifier = output_classifier if kappa > 0 else None
        self.val_attack = val_attack if val_attack is not None else attack
        self.generator_gan_loss, self.critic_gan_loss = GAN_LOSSES[gan_loss]
        self._rng_to_restore: dict | None = None
        self._attack_shares: dict[str, torch.Tensor] | None = None  # computed once a run (F is frozen)
        self._nonfinite = {"total": 0, "streak": 0}  # int or device tensors: skipped iterations, in a row

    # ----------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.hparams.channels_last:
            for net in self.networks():
                net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            for net in self.networks():
                net.compile()

    def networks(self) -> list[nn.Module]:
        """P, C, F and, with ``kappa > 0``, the output classifier."""
        nets = [self.purifier, self.critic, self.features]
        return nets + [self.output_classifier] if self.output_classifier is not None else nets

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
        # Different SSP random starts and crops on every rank; a resumed run restores its own RNG.
        if self._rng_to_restore is None:
            pl.seed_everything(self.hparams.seed + self.global_rank, workers=True, verbose=False)
        else:
            _set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every rank's random state (each draws its own SSP starts and crops): the ranks build the
        # checkpoint together, rank 0 writes it; each takes its own back on resume.
        states = _get_rng_states()
        checkpoint["nrp_rng_states"] = states
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, states)
            checkpoint["nrp_rng_states_per_rank"] = per_rank
        checkpoint["nrp_nonfinite"] = {k: int(v) for k, v in self._nonfinite.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        per_rank = checkpoint.get("nrp_rng_states_per_rank") or []
        rank = self.global_rank if self._trainer is not None else 0
        self._rng_to_restore = per_rank[rank] if rank < len(per_rank) else checkpoint.get("nrp_rng_states")
        self._nonfinite = dict(checkpoint.get("nrp_nonfinite", {"total": 0, "streak": 0}))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # ------------------------------------------------------- Algorithm 2 parts
    def find_adversaries(self, x: torch.Tensor) -> torch.Tensor:
        """Line 3: x' from x (SSP in NRP; Gaussian noise or FGSM in the ablations), then, with
        ``weak_fraction``, some perturbations weakened (still inside the budget and [0, 1]), then,
        with ``input_noise``, dynamic inference's noise on every x' (within 16/255 of x', in [0, 1])."""
        x_adv = self.attack(x, self.features)
        if self.hparams.weak_fraction > 0:
            b = x.shape[0]
            weak = torch.rand(b, device=x.device) < self.hparams.weak_fraction
            strength = torch.where(weak, torch.rand(b, device=x.device), torch.ones(b, device=x.device))
            x_adv = x + strength.view(b, 1, 1, 1) * (x_adv - x)
        if self.hparams.input_noise > 0:
            x_adv = dynamic_perturb(x_adv, sigma=self.hparams.input_noise, noise=torch.randn_like(x_adv))
        return x_adv

    def purifier_loss(self, x: torch.Tensor, purified: torch.Tensor, feat_clean: torch.Tensor,
                      logits_clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 8 and its three terms, plus ``kappa·L_out`` when ``kappa > 0`` (``logits_clean``: the
        output classifier's ``(B, K)`` logits of x) and ``detail·L_detail`` when ``detail > 0``. The
        critic sees real images without gradient."""
        hp = self.hparams
        logits_real = self.critic(x).detach()
        l_adv = self.generator_gan_loss(self.critic(purified), logits_real) if hp.alpha > 0 else purified.new_zeros(())
        l_img = pixel_loss(purified, x, hp.pixel_distance)
        l_feat = feature_loss(self.features(purified), feat_clean) if hp.lam > 0 else purified.new_zeros(())
        loss = hp.alpha * l_adv + hp.gamma * l_img + hp.lam * l_feat
        terms = {"loss_purifier": loss, "loss_adv": l_adv, "loss_img": l_img, "loss_feat": l_feat}
        if self.output_classifier is not None:
            terms["loss_out"] = output_consistency_loss(self.output_classifier(purified), logits_clean)
            terms["loss_purifier"] = terms["loss_purifier"] + hp.kappa * terms["loss_out"]
        if hp.detail > 0:
            terms["loss_detail"] = detail_loss(purified, x)
            terms["loss_purifier"] = terms["loss_purifier"] + hp.detail * terms["loss_detail"]
        return terms

    def critic_loss(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """Line 6: the critic learns to tell x from P(x')."""
        return self.critic_gan_loss(self.critic(x), self.critic(purified.detach()))

    # ------------------------------------------------------------------ steps
    def training_step(self, x: torch.Tensor, batch_idx: int) -> None:
        opt_purifier, opt_critic = self.optimizers()
        x = self._prepare(x)
        with torch.no_grad():
            feat_clean = self.features(x)
            logits_clean = self.output_classifier(x) if self.output_classifier is not None else None
        x_adv = self.find_adversaries(x)
        purified = self.purifier(x_adv)

        self.toggle_optimizer(opt_purifier)
        terms = self.purifier_loss(x, purified, feat_clean, logits_clean)
        opt_purifier.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss_purifier"])
        norm_purifier, bad_purifier = self.guarded_step(opt_purifier, self.purifier, terms["loss_purifier"])
        self.untoggle_optimizer(opt_purifier)

        self.toggle_optimizer(opt_critic)
        loss_critic = self.critic_loss(x, purified)
        opt_critic.zero_grad(set_to_none=True)
        self.manual_backward(loss_critic)
        norm_critic, bad_critic = self.guarded_step(opt_critic, self.critic, loss_critic)
        self.untoggle_optimizer(opt_critic)
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.count_nonfinite(bad_purifier | bad_critic)

        with torch.no_grad():
            metrics = {f"train/{k}": v.detach() for k, v in terms.items()}
            metrics["train/loss_critic"] = loss_critic.detach()
            metrics.update({"train/grad_norm_purifier": norm_purifier, "train/grad_norm_critic": norm_critic,
                            "train/nonfinite_steps": torch.as_tensor(self._nonfinite["total"], device=x.device).float()})
            metrics.update({f"train/{k}": v for k, v in self.purification_metrics(x, x_adv, purified, feat_clean).items()})
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False)
        self.log("train/loss", terms["loss_purifier"].detach(), prog_bar=True)

    # ------------------------------------------------------ divergence guard
    def guarded_step(self, optimizer, net: nn.Module, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``optimizer`` unless ``loss`` or the gradient norm of ``net`` is not finite.
        Returns the gradient norm and the non-finite flag, both 0-dim device tensors."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = _total_norm(grads) if grads else loss.new_zeros(())
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        inner = getattr(optimizer, "optimizer", optimizer)  # under the LightningOptimizer wrapper
        if not self.hparams.divergence_guard:
            optimizer.step()
        elif inner.defaults.get("fused"):
            inner.found_inf = bad.float()  # the fused kernel skips params, moments and step count
            try:
                optimizer.step()
            finally:
                del inner.found_inf
        else:  # non-fused optimizers cannot skip on the device: one host sync
            if bad.item():
                optimizer.zero_grad(set_to_none=True)  # Adam leaves parameters without gradient alone
            optimizer.step()  # still called, so Lightning's step count (and max_steps) stays right
        return norm.detach(), bad

    def count_nonfinite(self, bad: torch.Tensor) -> None:
        """Update the counters with this iteration's flag (on the device) and, every
        ``log_every_n_steps`` iterations, stop the run if the streak is longer than allowed."""
        total, streak = (torch.as_tensor(self._nonfinite[k], device=bad.device) for k in ("total", "streak"))
        self._nonfinite = {"total": total + bad.long(), "streak": (streak + 1) * bad.long()}
        trainer = self._trainer  # None when called outside a Trainer
        iteration = trainer.global_step // 2 if trainer is not None else 0
        every = max(trainer.log_every_n_steps, 1) if trainer is not None else 1
        if self.hparams.divergence_guard and iteration % every == 0:
            streak = int(self._nonfinite["streak"])
            if streak > self.hparams.max_nonfinite_steps:
                callback = trainer.checkpoint_callback if trainer is not None else None
                last = getattr(callback, "last_model_path", "") or "none written yet"
                raise DivergenceError(
                    f"training diverged: {streak} iterations in a row up to iteration {iteration} had a non-finite loss "
                    f"or gradient (more than module.max_nonfinite_steps={self.hparams.max_nonfinite_steps}); those "
                    f"steps were skipped, so the last checkpoint holds the last finite weights: {last}")

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


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, on their device (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def _get_rng_states() -> dict:
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    meta = states["numpy_meta"]
    np.random.set_state(("MT19937", states["numpy_key"].numpy().astype(np.uint32), meta[0], meta[1], meta[2]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
