"""FiDeSRModule: composes the backbone and the optional paper components, owns the losses.

Loss (DESIGN section 2): ``lambda_mse * MSE_w + lambda_lpips * LPIPS_w + lambda_csd * CSD_w`` where the
``_w`` terms are weighted by DAW's per-pixel map once its schedule starts (plain means otherwise). A
component switched off in the config is ``None`` here and simply absent from the computation.

The compared systems (docs/baselines.md) use the same module: OSEDiff's VSD (``vsd``, in place of CSD,
``+ lambda_vsd * VSD`` with a fake-score adapter trained by its own optimiser inside the step) and PiSA-SR's
two LoRA sets (``pix_steps``: the pixel set alone with the MSE until then, the semantic set after it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from fidesr.backbone.lora import LORA_SETS
from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.components.daw import resize_weights, weighted_mean
from fidesr.components.perceptual import PerceptualLoss
from fidesr.generator import OneStepOutput, one_step
from fidesr.pipeline import FiDeSRPipeline
from fidesr.seeding import derive_seed

log = logging.getLogger(__name__)


class FiDeSRModule(L.LightningModule):
    """One-step diffusion SR training (FiDeSR and its ablations).

    Args:
        backbone: the SD adapter with LoRA (``StableDiffusionBackbone``).
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the trainable parameters.
        scheduler: a partial LR scheduler or None (constant LR, as the paper).
        lrrb: ``LatentResidualRefinementBlock`` or None.
        daw: ``DetailAwareWeighting`` or None (plain losses).
        csd: ``ClassifierScoreDistillation`` or None (no distillation loss).
        lfim: ``LatentFrequencyInjection`` (inference only: validation and export) or None.
        perceptual: the LPIPS(VGG) loss network or None (``lambda_lpips`` must then be 0 and DAW off).
        degradation: applied on the device in ``on_after_batch_transfer`` (see fidesr.data.degradations).
        lambda_mse, lambda_lpips, lambda_csd: loss weights (1, 2, 1 in the paper).
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
        vsd: ``VariationalScoreDistillation`` (OSEDiff) or None; excludes ``csd``. Adds the fake-score
            adapter to the backbone's UNet and trains it in each step with its own optimiser.
        lambda_vsd: weight of the VSD loss (OSEDiff 1).
        pix_steps: PiSA-SR's two-stage schedule (needs ``backbone.lora_sets``): before this step only the
            pixel LoRA set is active and trained, with the MSE alone; from it on both sets are active, the
            pixel set frozen and the semantic set trained with the full loss. None: no stages.
    """

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        lrrb: nn.Module | None = None,
        daw: Any | None = None,
        csd: nn.Module | None = None,
        lfim: nn.Module | None = None,
        perceptual: PerceptualLoss | None = None,
        degradation: Any | None = None,
        lambda_mse: float = 1.0,
        lambda_lpips: float = 2.0,
        lambda_csd: float = 1.0,
        null_text_ratio: float = 0.5,
        color_fix: str = "adain",
        min_lq_size: int = 128,
        seed: int = 123,
        loss_chunk: int | None = None,
        compile_parts: Sequence[str] = (),
        compile_options: dict[str, Any] | None = None,
        vsd: nn.Module | None = None,
        lambda_vsd: float = 1.0,
        pix_steps: int | None = None,
    ) -> None:
        super().__init__()
        if vsd is not None and csd is not None:
            raise ValueError(
                "model.csd and model.vsd are both on: choose one distillation term (csd=off or vsd=off)"
            )
        if (pix_steps is not None) != (backbone.lora_sets == LORA_SETS):
            raise ValueError(
                "PiSA-SR's two-stage schedule needs both: model.pix_steps and backbone.lora_sets=[pix, sem] "
                f"(got pix_steps={pix_steps}, lora_sets={list(backbone.lora_sets)})"
            )
        if pix_steps is not None and (pix_steps < 0 or daw is not None):
            raise ValueError(
                "model.pix_steps must be >= 0 and needs daw=off (the pixel stage has no LPIPS map)"
            )
        self.vsd, self.lambda_vsd, self.pix_steps = vsd, lambda_vsd, pix_steps
        if vsd is not None:
            backbone.add_fake_score_adapter(
                int(vsd.fake_rank or backbone.lora_rank),
                float(vsd.fake_alpha or backbone.lora_alpha),
                vsd.fake_modules,
            )
        self._fake_optimizer: torch.optim.Optimizer | None = None
        self._fake_scaler: torch.amp.GradScaler | None = None
        self._fake_state: dict | None = None  # from a checkpoint, until the optimiser exists
        if perceptual is None and (lambda_lpips > 0 or daw is not None):
            raise ValueError(
                "model.perceptual is null but lambda_lpips > 0 or DAW is on (DAW's error map needs the "
                "spatial LPIPS map): set perceptual=lpips_vgg (or perceptual=standin offline)"
            )
        self.backbone, self.lrrb, self.csd, self.lfim, self.perceptual = backbone, lrrb, csd, lfim, perceptual
        self.daw, self.degradation = daw, degradation
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lambda_mse, self.lambda_lpips, self.lambda_csd = lambda_mse, lambda_lpips, lambda_csd
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
    def pix_stage(self) -> bool:
        """PiSA-SR's pixel stage (only the pixel LoRA set, MSE alone) at the current step."""
        return self.pix_steps is not None and self.global_step < self.pix_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The PiSA-SR stage follows the step (so a resumed run is in the right one).
        if self.pix_steps is not None:
            if self.pix_stage:
                self.backbone.set_lora_sets(["pix"])
            else:
                self.backbone.set_lora_sets(LORA_SETS, trained=["sem"])

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
        lpips_map = self.perceptual(sr, gt) if self.perceptual is not None and not self.pix_stage else None
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

    def _loss_scale(self) -> float:
        """The current fp16 GradScaler scale (1 without one)."""
        plugin = getattr(self._trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
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
        if self.csd is not None and not self.pix_stage:
            pos = self.backbone.encode_prompt(tags)
            neg = self.backbone.encode_prompt([self.csd.negative_prompt] * len(tags))
            w_lat = None if weights is None else resize_weights(weights, out.z_sr.shape[-2:])
            loss_csd = self.csd(
                out.z_sr.float(),
                self.backbone.teacher_eps,
                pos,
                neg,
                self.backbone.alphas_cumprod,
                weight_map=w_lat,
                generator=g_dev,
            )
            loss = loss + self.lambda_csd * loss_csd
            logs["loss/csd"] = loss_csd.detach()
        if self.vsd is not None:
            pos = self.backbone.encode_prompt(tags)
            neg = self.backbone.encode_prompt([self.vsd.negative_prompt] * len(tags))
            loss_vsd = self.vsd(
                out.z_sr.float(),
                self.backbone.teacher_eps,
                self.backbone.fake_eps,
                pos,
                neg,
                self.backbone.alphas_cumprod,
                generator=g_dev,
            )
            loss = loss + self.lambda_vsd * loss_vsd
            logs["loss/vsd"] = loss_vsd.detach()
            logs["loss/vsd_fake_score"] = self.fake_score_step(out.z_sr, pos, g_dev)
        logs["loss/total"] = loss.detach()
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=gt.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=gt.shape[0])
        return loss

    def fake_score_step(
        self, z_sr: torch.Tensor, pos: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """One optimiser step of the VSD fake score on the generator's detached latents ``z_sr``
        ``[B,C,h,w]`` (OSEDiff trains it after the generator's step; its loss does not depend on the
        generator's new weights, and the generator's VSD term used the fake score before this step either
        way). Returns the detached diffusion loss."""
        from fidesr.backbone.lora import FAKE_SCORE_ADAPTER

        opt, scaler = self._fake_score_optimizer()
        params = self.backbone.fake_score_parameters()
        # The adapter must be active (and require grad) through the backward as well as the forward.
        with self.backbone.adapters_active([FAKE_SCORE_ADAPTER]), torch.enable_grad():
            loss = self.vsd.fake_score_loss(
                z_sr, self.backbone.fake_eps, pos, self.backbone.alphas_cumprod, generator
            )
            opt.zero_grad(set_to_none=True)
            with torch.autocast(z_sr.device.type, enabled=False):
                scaler.scale(loss).backward()
            if self.vsd.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, self.vsd.grad_clip)
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def _fake_score_optimizer(self) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
        """The fake score's optimiser and fp16 loss scaler, made on first use (state from a checkpoint)."""
        if self._fake_optimizer is None:
            self._fake_optimizer = self.vsd.make_optimizer(self.backbone.fake_score_parameters())
            plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
            fp16 = getattr(plugin, "scaler", None) is not None
            self._fake_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
            if self._fake_state is not None:
                self._fake_optimizer.load_state_dict(self._fake_state["optimizer"])
                self._fake_scaler.load_state_dict(self._fake_state["scaler"])
                self._fake_state = None
        return self._fake_optimizer, self._fake_scaler

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
        keys |= {
            f"backbone.unet.{k}" for k in self.backbone.fake_score_state_dict()
        }  # resume, never exported
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
        if self.vsd is not None:
            opt, scaler = self._fake_score_optimizer()
            checkpoint["fidesr_fake_score"] = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable tensors of this model (e.g. {missing[:3]}); "
                "was it trained with another lrrb / LoRA configuration?"
            )
        if self.vsd is not None:
            if "fidesr_fake_score" not in checkpoint:
                raise KeyError("checkpoint lacks the VSD fake-score optimiser state (fidesr_fake_score)")
            self._fake_optimizer, self._fake_state = None, checkpoint["fidesr_fake_score"]
