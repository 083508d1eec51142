"""FiDeSRModule: composes the backbone and the optional paper components, owns the losses.

Loss (DESIGN section 2): ``lambda_mse * MSE_w + lambda_lpips * LPIPS_w + lambda_distill * D_w`` where the
``_w`` terms are weighted by DAW's per-pixel map once its schedule starts (plain means otherwise) and ``D``
is the configured distillation term (FiDeSR: CSD). A component switched off in the config is ``None`` here
and simply absent from the computation.

The module names no method: a compared system (docs/baselines.md) is its parts, built from its config and
handed in: a distillation term (:mod:`fidesr.components.distill`: the term owns whatever state and
optimiser of its own it needs) and a stage schedule (:mod:`fidesr.stages`: which LoRA sets train and which
losses act, step by step).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.components.daw import weighted_mean
from fidesr.components.distill.base import DistillationTerm
from fidesr.components.perceptual import PerceptualLoss
from fidesr.generator import OneStepOutput, one_step
from fidesr.pipeline import FiDeSRPipeline
from fidesr.seeding import derive_seed
from fidesr.stages import Stage, StageSchedule

log = logging.getLogger(__name__)


class FiDeSRModule(L.LightningModule):
    """One-step diffusion SR training (FiDeSR and its ablations).

    Args:
        backbone: the SD adapter with LoRA (``StableDiffusionBackbone``).
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the trainable parameters.
        scheduler: a partial LR scheduler or None (constant LR, as the paper).
        lrrb: ``LatentResidualRefinementBlock`` or None.
        daw: ``DetailAwareWeighting`` or None (plain losses).
        distill: the distillation term (:class:`~fidesr.components.distill.base.DistillationTerm`: CSD,
            VSD, ...) or None (no distillation loss); attached to the backbone here.
        lfim: ``LatentFrequencyInjection`` (inference only: validation and export) or None.
        perceptual: the LPIPS(VGG) loss network or None (``lambda_lpips`` must then be 0 and DAW off).
        degradation: applied on the device in ``on_after_batch_transfer`` (see fidesr.data.degradations).
        lambda_mse, lambda_lpips, lambda_distill: loss weights (1, 2, 1 in the paper).
        null_text_ratio: probability that the whole batch uses the empty prompt for the generator.
        color_fix, min_lq_size: validation inference settings (see ``FiDeSRPipeline``).
        seed: base seed of the per-step random streams (dropout of prompts, VAE sampling, CSD noise), so
            that a resumed run draws exactly what an uninterrupted one would.
        loss_chunk: decode and score the SR images this many at a time (``None``: the whole batch), each
            chunk's backward run at once; same loss and gradient, a fraction of the decoder + LPIPS
            activation memory (``memory=24gib`` uses 1).
        compile_parts: parts to ``torch.compile`` in place for training (and validation), from
            ``unet``, ``vae_decoder``, ``lpips``, ``lrrb``: the decoder's fp32 GroupNorm + SiLU at full
            resolution are memory-bound in eager mode, which fusion addresses.
        compile_options: keyword arguments of ``torch.compile`` (e.g. ``mode``, ``dynamic``, ``backend``).
        stages: a :class:`~fidesr.stages.StageSchedule` (which LoRA sets are active and trained, and
            whether the perceptual and distillation losses act, per step; needed by a backbone with
            several LoRA sets) or None: one stage, everything on.
    """

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        lrrb: nn.Module | None = None,
        daw: Any | None = None,
        distill: DistillationTerm | None = None,
        lfim: nn.Module | None = None,
        perceptual: PerceptualLoss | None = None,
        degradation: Any | None = None,
        lambda_mse: float = 1.0,
        lambda_lpips: float = 2.0,
        lambda_distill: float = 1.0,
        null_text_ratio: float = 0.5,
        color_fix: str = "adain",
        min_lq_size: int = 128,
        seed: int = 123,
        loss_chunk: int | None = None,
        compile_parts: Sequence[str] = (),
        compile_options: dict[str, Any] | None = None,
        stages: StageSchedule | None = None,
    ) -> None:
        super().__init__()
        if backbone.lora_sets and stages is None:
            raise ValueError(
                f"backbone.lora_sets={list(backbone.lora_sets)} needs a stage schedule saying which set "
                "trains when (stages=<schedule>, conf/stages/)"
            )
        if stages is not None:
            stages.check(backbone.lora_sets, daw is not None)
        self.stages = stages
        if distill is not None:
            distill.attach(backbone)
        if perceptual is None and (lambda_lpips > 0 or daw is not None):
            raise ValueError(
                "model.perceptual is null but lambda_lpips > 0 or DAW is on (DAW's error map needs the "
                "spatial LPIPS map): set perceptual=lpips_vgg (or perceptual=standin offline)"
            )
        self.backbone, self.lrrb, self.lfim, self.perceptual = backbone, lrrb, lfim, perceptual
        self.distill = distill
        self.daw, self.degradation = daw, degradation
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lambda_mse, self.lambda_lpips, self.lambda_distill = lambda_mse, lambda_lpips, lambda_distill
        self.null_text_ratio, self.seed = null_text_ratio, seed
        if loss_chunk is not None and loss_chunk < 1:
            raise ValueError(
                f"model.loss_chunk must be a positive number of images or null, got {loss_chunk}"
            )
        self.loss_chunk = loss_chunk
        self.compile_parts = tuple(compile_parts)
        parts = self._compilable_parts()
        for name in self.compile_parts:
            if name not in parts:
                raise ValueError(f"model.compile_parts: unknown part {name!r}; choose from {sorted(parts)}")
            if parts[name] is None:
                raise ValueError(f"model.compile_parts names {name!r}, which is switched off in this config")
            parts[name].compile(**dict(compile_options or {}))
        self.pipeline = FiDeSRPipeline(
            backbone, lrrb, lfim, color_fix=color_fix, min_lq_size=min_lq_size, check_finite=False
        )
        self.val_set_names: list[str] = ["val"]
        self.run_config: dict | None = None  # the resolved Hydra config, stored in checkpoints
        # Checkpoints hold only what trains; frozen SD weights come from backbone.pretrained.
        self.strict_loading = False

    def _compilable_parts(self) -> dict[str, nn.Module | None]:
        return {
            "unet": self.backbone.unet,
            "vae_decoder": self.backbone.vae.decoder,
            "lpips": self.perceptual.lpips if self.perceptual is not None else None,
            "lrrb": self.lrrb,
        }

    # ------------------------------------------------------------------ randomness
    def step_seed(self, stream: int = 0) -> int:
        """A 63-bit seed from (seed, global step, rank, stream) (:func:`fidesr.seeding.derive_seed`):
        reproducible across resumes."""
        return derive_seed(self.seed, self.global_step, self.global_rank, stream)

    def step_generator(self, device: torch.device, stream: int = 0) -> torch.Generator:
        """A torch generator on ``device`` seeded with :meth:`step_seed`."""
        g = torch.Generator(device=device)
        g.manual_seed(self.step_seed(stream))
        return g

    @property
    def stage(self) -> Stage | None:
        """The training stage of the current step (None without a schedule: everything on)."""
        return None if self.stages is None else self.stages.at(self.global_step)

    def _acts(self, loss: str) -> bool:
        """Whether ``loss`` (``"perceptual"`` or ``"distill"``) acts in the current stage."""
        stage = self.stage
        return stage is None or bool(getattr(stage, loss))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The stage follows the step (so a resumed run is in the right one).
        stage = self.stage
        if stage is not None and self.backbone.lora_sets:
            self.backbone.set_lora_sets(stage.lora_sets or self.backbone.lora_sets, trained=stage.trained)

    # ------------------------------------------------------------------ data
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Degradation parameters were sampled on the CPU by the dataset; the heavy ops run batched here.
        if "deg" in batch and self.degradation is not None:
            with torch.no_grad():
                batch["lq"] = self.degradation.apply(batch["gt"], batch["deg"]).clamp(0, 1)
        return batch

    # ------------------------------------------------------------------ forward
    def forward(
        self, lq_up: torch.Tensor, prompts: list[str], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, OneStepOutput]:
        """Training forward: upsampled LQ [B,3,H,W] in [-1,1] -> (SR [B,3,H,W] in [-1,1], latents)."""
        out = self.sr_latent(lq_up, prompts, generator)
        return self.backbone.decode(out.z_sr), out

    def sr_latent(
        self, lq_up: torch.Tensor, prompts: list[str], generator: torch.Generator | None = None
    ) -> OneStepOutput:
        """Encode (no grad, unless the VAE encoder has OSEDiff's LoRA), UNet + LRRB: the SR latent ``z_sr``
        [B,C,H/8,W/8] with its graph."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.backbone.vae_lora_modules)):
            z_lq = self.backbone.encode(lq_up, generator=generator)
        with torch.no_grad():
            embeds = self.backbone.encode_prompt(prompts)
        return one_step(self.backbone, self.lrrb, z_lq.float(), embeds.float())

    def pixel_losses(
        self, z_sr: torch.Tensor, gt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Decode ``z_sr`` and score it against ``gt`` [n,3,H,W] in [-1,1]: the weighted MSE + LPIPS term
        (a scalar mean over these n images), the DAW weights [n,1,H,W] (None while DAW is off) and the
        detached loss parts. Every term is a per-image mean, so chunks of a batch combine exactly."""
        sr = self.backbone.decode(z_sr).float()
        parts: dict[str, torch.Tensor] = {}
        lpips_map = (
            self.perceptual(sr, gt) if self.perceptual is not None and self._acts("perceptual") else None
        )
        weights = self.daw(sr, gt, lpips_map, self.global_step) if self.daw is not None else None
        loss_mse = weighted_mean((sr - gt) ** 2, weights)
        loss = self.lambda_mse * loss_mse
        parts["loss/mse"] = loss_mse.detach()
        if lpips_map is not None:
            loss_lpips = weighted_mean(lpips_map, weights)
            loss = loss + self.lambda_lpips * loss_lpips
            parts[f"loss/{self.perceptual.name}"] = loss_lpips.detach()
        return loss, weights, parts

    def chunked_pixel_losses(
        self, z_sr: torch.Tensor, gt: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """:meth:`pixel_losses` ``chunk`` images at a time, each chunk's backward run at once down to the
        latent, so that only one chunk's decoder and LPIPS activations are ever alive (the memory peak of
        a training step at 512 px). The returned loss has the full-batch value and, through ``z_sr``, the
        full-batch gradient: ``L + <z_sr, g> - <z_sr, g>.detach()`` with ``g = dL/dz_sr`` from the chunks.
        """
        b = z_sr.shape[0]
        scale = self._loss_scale()
        grads, weights, total = [], [], torch.zeros((), device=z_sr.device)
        parts: dict[str, torch.Tensor] = {}
        for start in range(0, b, chunk):
            z_c = z_sr[start : start + chunk].detach().requires_grad_()
            loss_c, w_c, parts_c = self.pixel_losses(z_c, gt[start : start + chunk])
            share = z_c.shape[0] / b  # per-chunk means -> the batch mean
            # fp16 training: scale like the GradScaler does, or the small per-pixel gradients underflow.
            # The backward runs outside autocast, as the final one does.
            with torch.autocast(z_c.device.type, enabled=False):
                (g_c,) = torch.autograd.grad(loss_c * (share * scale), z_c)
            grads.append(g_c)
            weights.append(w_c)
            total = total + share * loss_c.detach()
            for k, v in parts_c.items():
                parts[k] = parts.get(k, 0.0) + share * v
        g = torch.cat(grads) / scale
        link = (z_sr.float() * g).sum()
        loss = total + link - link.detach()
        return loss, (None if weights[0] is None else torch.cat(weights)), parts

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        """The trainer's fp16 GradScaler (None without one, or without a trainer)."""
        plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        return getattr(plugin, "scaler", None)

    def _loss_scale(self) -> float:
        """The current fp16 GradScaler scale (1 without one)."""
        scaler = self._grad_scaler()
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        gt = batch["gt"] * 2 - 1
        lq = batch["lq"] * 2 - 1
        tags = list(batch.get("prompt") or [""] * gt.shape[0])
        g_dev = self.step_generator(gt.device, stream=1)
        # The whole batch drops its tags together, as the official null_text_ratio does (a host-side draw).
        drop = random.Random(self.step_seed(0)).random() < self.null_text_ratio
        out = self.sr_latent(lq, [""] * len(tags) if drop else tags, generator=g_dev)

        if self.loss_chunk and self.loss_chunk < gt.shape[0]:
            loss, weights, parts = self.chunked_pixel_losses(out.z_sr, gt, self.loss_chunk)
        else:
            loss, weights, parts = self.pixel_losses(out.z_sr, gt)
        logs: dict[str, torch.Tensor | float] = dict(parts)
        if self.daw is not None:
            logs["daw/alpha"] = self.daw.alpha_at(self.global_step)
            if weights is not None:
                logs["daw/w_mean"], logs["daw/w_max"] = weights.mean(), weights.max()
        if self.distill is not None and self._acts("distill"):
            term = self.distill.training_loss(
                out.z_sr, self.backbone, tags, weight_map=weights, generator=g_dev, fp16=self._fp16()
            )
            loss = loss + self.lambda_distill * term.loss
            logs[f"loss/{self.distill.name}"] = term.loss.detach()
            logs.update({f"loss/{k}": v for k, v in term.logs.items()})
        logs["loss/total"] = loss.detach()
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=gt.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=gt.shape[0])
        return loss

    def _fp16(self) -> bool:
        """Whether the trainer scales the losses (fp16 mixed precision): a term's own step does too."""
        return self._grad_scaler() is not None

    def setup(self, stage: str) -> None:
        """Validation set names (dataloader index -> name) from the datamodule, for the outputs' ``set``."""
        names = getattr(getattr(self._trainer, "datamodule", None), "val_set_names", None)
        if names:
            self.val_set_names = list(names)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = self.pipeline(batch["lq"])
        set_name = self.val_set_names[dataloader_idx] if dataloader_idx < len(self.val_set_names) else "val"
        return {
            "sr": out.sr,
            "gt": batch["gt"],
            "lq": out.lq_up,
            "name": list(batch["name"]),
            "set": set_name,
        }

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"sr": self.pipeline(batch["lq"]).sr, "name": list(batch["name"])}

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.backbone.trainable_parameters())
        if self.lrrb is not None:
            params += [p for p in self.lrrb.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_keys(self) -> set[str]:
        keys = {f"backbone.unet.{k}" for k in self.backbone.lora_state_dict()}
        keys |= {f"backbone.unet.{k}" for k in self.backbone.auxiliary_state_dict()}  # resume, never exported
        keys |= {f"backbone.vae.{k}" for k in self.backbone.vae_lora_state_dict()}
        if self.lrrb is not None:
            keys |= {f"lrrb.{k}" for k in self.lrrb.state_dict()}
        return keys

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> FiDeSRModule:  # type: ignore[override]
        """Not supported: the module is built from the Hydra config (components, not hyper-parameters)."""
        raise NotImplementedError(
            "FiDeSRModule is composed from the Hydra config, so Lightning's load_from_checkpoint cannot rebuild "
            "it. For inference: fidesr.pipeline.FiDeSRPipeline.from_pretrained(path) (checkpoint, exported folder, "
            "official .pkl or Hub id); to train on: fidesr-train <the run's overrides> ckpt_path=path"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["fidesr"] = {"config": self.run_config, "trainable_keys": sorted(keep)}
        if self.distill is not None and self.distill.state_key:
            checkpoint[self.distill.state_key] = self.distill.checkpoint_state(self._fp16())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable tensors of this model (e.g. {missing[:3]}); "
                "was it trained with another lrrb / LoRA configuration?"
            )
        term = self.distill
        if term is not None and term.state_key:
            if term.state_key not in checkpoint:
                raise KeyError(f"checkpoint lacks the {term.name} term's training state ({term.state_key})")
            term.load_checkpoint_state(checkpoint[term.state_key])
