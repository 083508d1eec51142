"""The backbone's adapters: the generator's LoRA (one set or several), the frozen-prior views, the VSD
fake-score adapter, the VAE-encoder LoRA, their state and their inference-time strengths.

:class:`AdapterMixin` is mixed into :class:`~fidesr.backbone.sd.StableDiffusionBackbone` (as diffusers mixes
its LoRA loaders into its models): everything here works on ``self.unet`` / ``self.vae`` through peft's
named adapters, and the SD adapter itself (``sd.py``: encode, decode, text, the one UNet call) knows none
of it. What adapters exist is decided by the constructor's arguments (:meth:`_init_adapters`) and by the
parts that need one (a distillation term's :meth:`attach` adds the fake score).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from fidesr.backbone.lora import (
    FAKE_SCORE_ADAPTER,
    LORA_SETS,
    LORA_TARGETS,
    VAE_ADAPTER,
    add_adapter,
    add_lora_adapters,
    vae_encoder_lora_targets,
)

__all__ = ["AdapterMixin"]

# "<module>.lora_A.<adapter>.weight" (peft names inside the UNet): the adapter a LoRA tensor belongs to.
_LORA_ADAPTER = re.compile(r"\.lora_[AB]\.(?P<adapter>[^.]+)\.weight$")


def _lora_to_float(module: nn.Module) -> None:
    """Trained (LoRA) weights stay float32, the optimiser's precision, whatever the frozen dtype."""
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()


class AdapterMixin:
    """LoRA adapters of a backbone with ``unet``, ``vae`` and ``residual(z_lq, embeds)``.

    State (set by :meth:`_init_adapters`): ``lora_split`` (generator adapter -> its modules),
    ``lora_rank`` / ``lora_alpha``, ``vae_lora_modules``, ``fake_score_modules``, the frozen adapters of
    the current stage and the inference-time set strengths.
    """

    unet: nn.Module
    vae: nn.Module

    def _init_adapters(
        self,
        lora_rank: int,
        lora_alpha: float,
        lora_init: str | bool,
        lora_targets: Sequence[str] = LORA_TARGETS,
        lora_sets: Sequence[str] | None = None,
        vae_lora_rank: int = 0,
    ) -> None:
        """Add the generator's LoRA (``lora_rank`` 0: none; ``lora_sets``: several sets of the three
        adapters on the same modules) and OSEDiff's VAE-encoder LoRA (``vae_lora_rank`` > 0)."""
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.lora_split: dict[str, list[str]] = {}
        if lora_rank > 0:
            self.lora_split = add_lora_adapters(
                self.unet, lora_rank, lora_alpha, lora_init, tuple(lora_targets), sets=lora_sets or None
            )
            _lora_to_float(self.unet)
        self.vae_lora_modules: list[str] = []
        if vae_lora_rank > 0:
            self.vae_lora_modules = vae_encoder_lora_targets(self.vae)
            add_adapter(self.vae, VAE_ADAPTER, self.vae_lora_modules, vae_lora_rank, lora_alpha, lora_init)
            _lora_to_float(self.vae)
        self._frozen_adapters: set[str] = set()  # active but not trained (a stage's frozen set)
        self.fake_score_modules: list[str] = []  # modules of the VSD fake-score adapter (none: no VSD)
        self._strengths: dict[str, float] | None = None  # per-set inference strengths in force

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The generator's trainable UNet parameters. With two LoRA sets or a fake-score adapter, peft's
        ``requires_grad`` follows which adapters are active, so the generator's LoRA (every set) is
        selected by adapter name instead: one optimiser over all of it, as PiSA-SR's."""
        if not self.lora_sets and not self.fake_score_modules and not self.vae_lora_modules:
            return (p for p in self.unet.parameters() if p.requires_grad)
        unet = [p for n, p in self.unet.named_parameters() if self._adapter_of(n) in self.lora_split]
        return iter(unet + [p for n, p in self.vae.named_parameters() if "lora_" in n])

    @staticmethod
    def _adapter_of(name: str) -> str | None:
        """The adapter of a UNet LoRA tensor name, None for other tensors."""
        m = _LORA_ADAPTER.search(name)
        return None if m is None else m["adapter"]

    # ------------------------------------------------------------------ LoRA sets (PiSA-SR)
    @property
    def lora_sets(self) -> tuple[str, ...]:
        """The LoRA sets this backbone's adapter names carry (``("pix", "sem")`` for PiSA-SR, else ``()``)."""
        return tuple(s for s in LORA_SETS if any(a.endswith(f"_{s}") for a in self.lora_split))

    def set_adapters_of(self, sets: Sequence[str]) -> list[str]:
        """The generator adapters of the given LoRA sets (all of them for ``sets == lora_sets``)."""
        unknown = [s for s in sets if s not in self.lora_sets]
        if unknown:
            raise ValueError(f"LoRA sets {unknown} are not on this backbone (it has {list(self.lora_sets)})")
        return [a for a in self.lora_split if any(a.endswith(f"_{s}") for s in sets)]

    def set_lora_sets(self, active: Sequence[str], trained: Sequence[str] | None = None) -> None:
        """Activate the adapters of the ``active`` sets; only those of ``trained`` (default: the active
        ones) require grad: PiSA-SR's pixel stage is ``(["pix"], ["pix"])``, its semantic stage
        ``(["pix", "sem"], ["sem"])`` (pix frozen)."""
        self.unet.set_adapters(self.set_adapters_of(active))
        self._frozen_adapters = set(self.set_adapters_of(active)) - set(
            self.set_adapters_of(trained or active)
        )
        self._apply_frozen()

    def _apply_frozen(self) -> None:
        # peft sets requires_grad=True on every active adapter whenever adapters are (re)activated.
        if self._frozen_adapters:
            for name, param in self.unet.named_parameters():
                if self._adapter_of(name) in self._frozen_adapters:
                    param.requires_grad_(False)

    @contextlib.contextmanager
    def adapters_active(self, adapters: Sequence[str]) -> Iterator[None]:
        """Only ``adapters`` active inside the block; the previously active ones (and the frozen flags)
        restored after, also on error."""
        previous = list(self.unet.active_adapters())
        self.unet.set_adapters(list(adapters))
        try:
            yield
        finally:
            self.unet.set_adapters(previous)
            self._apply_frozen()

    # ------------------------------------------------------------------ inference-time set strengths
    @contextlib.contextmanager
    def set_strengths(self, strengths: Mapping[str, float] | None) -> Iterator[None]:
        """Inside the block, :meth:`residual` mixes the LoRA sets with these strengths (a set not named
        counts 1; None: no mixing, the active adapters as they are). PiSA-SR's rule (its ``pisasr.py``,
        DESIGN section 7) for sets ``s_1..s_n`` in :attr:`lora_sets` order, ``eps_k`` the UNet with the
        first ``k`` sets active: ``sum_k lambda_k (eps_k - eps_(k-1))`` with ``eps_0 = 0``; all ones is
        ``eps_n`` in one UNet call."""
        if strengths is None:
            yield
            return
        unknown = sorted(set(strengths) - set(self.lora_sets))
        if not self.lora_sets or unknown:
            raise ValueError(
                f"set strengths {dict(strengths)} need a model with several LoRA sets, these among them "
                f"(backbone.lora_sets; this one has {list(self.lora_sets) or 'one set'})"
            )
        previous = self._strengths
        self._strengths = {s: float(strengths.get(s, 1.0)) for s in self.lora_sets}
        try:
            yield
        finally:
            self._strengths = previous

    def mixed_residual(self, z_lq: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The residual [B,C,h,w] under the strengths in force (:meth:`set_strengths`), from
        ``z_lq`` [B,C,h,w] and ``prompt_embeds`` [B,L,D]."""
        strengths = self._strengths or {}
        sets = list(self.lora_sets)
        if all(strengths.get(s, 1.0) == 1 for s in sets):
            with self.adapters_active(self.set_adapters_of(sets)):
                return self.unet_residual(z_lq, prompt_embeds)
        mixed, previous = None, None
        for k, name in enumerate(sets):
            with self.adapters_active(self.set_adapters_of(sets[: k + 1])):
                eps = self.unet_residual(z_lq, prompt_embeds)
            term = strengths[name] * (eps if previous is None else eps - previous)
            mixed, previous = (term if mixed is None else mixed + term), eps
        return mixed

    # ------------------------------------------------------------------ VSD fake score (OSEDiff)
    def add_fake_score_adapter(self, rank: int, alpha: float, modules: str = "mid") -> None:
        """Add OSEDiff's fake-score LoRA as one more adapter (:data:`FAKE_SCORE_ADAPTER`) on this UNet: the
        fake score is the frozen base UNet + this adapter, evaluated with the generator's adapters off, so
        no second UNet is held. ``modules``: ``"mid"`` (the modules of ``default_others``: the official
        code's effective set-up, where only that adapter of its fake-score UNet is ever active) or ``"all"``
        (every generator LoRA module, what the official code intends). Inactive (no grad) until used."""
        if modules not in ("mid", "all"):
            raise ValueError(f"fake-score adapter modules must be 'mid' or 'all', got {modules!r}")
        if not self.lora_split:
            raise ValueError("the VSD fake-score adapter needs the generator's LoRA (backbone.lora_rank > 0)")
        if self.fake_score_modules:
            raise ValueError("this backbone already has a fake-score adapter")
        if modules == "all":
            targets = sorted({m for mods in self.lora_split.values() for m in mods})
        else:
            targets = sorted(
                {m for a, mods in self.lora_split.items() if a.startswith("default_others") for m in mods}
            )
        previous = list(self.unet.active_adapters())
        add_adapter(self.unet, FAKE_SCORE_ADAPTER, targets, rank, alpha)
        for name, param in self.unet.named_parameters():
            if self._adapter_of(name) == FAKE_SCORE_ADAPTER:
                param.data = param.data.float()
        self.unet.set_adapters(previous)
        self._apply_frozen()
        self.fake_score_modules = targets

    def fake_score_parameters(self) -> list[nn.Parameter]:
        """The fake-score adapter's LoRA parameters (its own optimiser)."""
        return [p for n, p in self.unet.named_parameters() if self._adapter_of(n) == FAKE_SCORE_ADAPTER]

    def fake_eps(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the fake score (base UNet + fake-score adapter only); builds a graph into
        the adapter when grad is enabled. z_t [N,C,h,w], t [N] long, prompt_embeds [N,L,D] -> [N,C,h,w]."""
        if not self.fake_score_modules:
            raise ValueError("no fake-score adapter: add_fake_score_adapter first")
        with self.adapters_active([FAKE_SCORE_ADAPTER]):
            return self.unet(z_t, t, encoder_hidden_states=prompt_embeds).sample

    def auxiliary_state_dict(self) -> dict[str, torch.Tensor]:
        """Training-only adapter tensors of the UNet (the fake score): checkpoints for resume, never exports."""
        return self.fake_score_state_dict()

    @contextlib.contextmanager
    def fake_score_active(self) -> Iterator[None]:
        """Only the fake-score adapter active (and trainable) inside the block."""
        with self.adapters_active([FAKE_SCORE_ADAPTER]):
            yield

    # ------------------------------------------------------------------ frozen-prior views
    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The frozen base UNet: LoRA adapters off inside the block, restored after (also on error)."""
        if not self.lora_split:
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()
            self._apply_frozen()

    @torch.no_grad()
    def teacher_eps(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the frozen SD UNet (adapters disabled); no graph is built.

        z_t [N,C,h,w], t [N] long in [0, 1000), prompt_embeds [N,L,D] -> eps [N,C,h,w].
        """
        with self.adapters_disabled():
            return self.unet(z_t, t, encoder_hidden_states=prompt_embeds).sample

    # ------------------------------------------------------------------ LoRA state
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's LoRA tensors of the UNet (names as in ``unet.state_dict()``, adapter names
        included); not the VSD fake-score adapter (:meth:`fake_score_state_dict`)."""
        return {
            k: v
            for k, v in self.unet.state_dict().items()
            if "lora_" in k and self._adapter_of(k) != FAKE_SCORE_ADAPTER
        }

    def vae_lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The VAE-encoder LoRA tensors (``vae.state_dict()`` names); empty without one."""
        return {k: v for k, v in self.vae.state_dict().items() if "lora_" in k}

    def load_vae_lora_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "trained weights"
    ) -> None:
        """Load the VAE-encoder LoRA (names as :meth:`vae_lora_state_dict`); all of it, nothing else."""
        own = self.vae_lora_state_dict()
        if set(state) != set(own):
            raise KeyError(
                f"{source}: the VAE-encoder LoRA does not fit (backbone.vae_lora_rank?): "
                f"{len(set(own) - set(state))} missing, {len(set(state) - set(own))} unknown"
            )
        self.vae.load_state_dict(dict(state), strict=False, assign=False)

    def fake_score_state_dict(self) -> dict[str, torch.Tensor]:
        """The VSD fake-score adapter's tensors (training state: checkpoints for resume, never exports)."""
        return {k: v for k, v in self.unet.state_dict().items() if self._adapter_of(k) == FAKE_SCORE_ADAPTER}

    def add_named_adapters(self, split: Mapping[str, Sequence[str]], rank: int, alpha: float) -> None:
        """Add LoRA adapters with *given* module lists (an official ``unet_lora_*_modules`` or an exported
        folder's) to a backbone built with ``lora_rank=0``; the weights are loaded right after."""
        if self.lora_split:
            raise ValueError("add_named_adapters needs a backbone built without LoRA (lora_rank=0)")
        names = [name for name, targets in split.items() if targets]
        for name in names:
            add_adapter(self.unet, name, split[name], rank, alpha)
        self.unet.set_adapters(names)
        self.lora_split = {name: list(split[name]) for name in names}
        self.lora_rank, self.lora_alpha = rank, float(alpha)

    def load_lora_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "trained weights"
    ) -> None:
        """Load LoRA tensors named as in :meth:`lora_state_dict` (``unet.state_dict()`` names).

        Every LoRA tensor of this UNet must be given; non-LoRA UNet tensors (official files may carry
        ``conv_in``) are loaded when the UNet has them. Raises ``KeyError`` naming ``source`` and the
        keys that do not fit (missing, unknown, wrong shape).
        """
        unet_sd = self.unet.state_dict()
        missing = sorted(
            k
            for k in unet_sd
            if "lora_" in k and k not in state and self._adapter_of(k) != FAKE_SCORE_ADAPTER
        )
        unknown = sorted(k for k in state if k not in unet_sd)
        shapes = sorted(k for k in state if k in unet_sd and tuple(state[k].shape) != tuple(unet_sd[k].shape))
        problems = []
        if missing:
            problems.append(f"{len(missing)} LoRA tensors missing (e.g. {missing[:2]})")
        if unknown:
            problems.append(
                f"{len(unknown)} UNet tensors this backbone lacks (e.g. {unknown[:2]}; other LoRA targets?)"
            )
        if shapes:
            problems.append(f"{len(shapes)} tensors of another shape (e.g. {shapes[:2]}; another LoRA rank?)")
        if problems:
            raise KeyError(f"{source} do not fit the model: " + "; ".join(problems))
        self.unet.load_state_dict(dict(state), strict=False, assign=False)

    def fuse_lora(self) -> None:
        """Merge the adapters into the UNet weights and remove the adapter layers (diffusers' own
        ``fuse_lora`` + ``unload_lora``). Inference only: afterwards the UNet is a plain diffusers UNet
        (one weight per layer, the friendliest to ``torch.compile``) and the teacher view is gone."""
        if self.vae_lora_modules:
            self.vae.fuse_lora(adapter_names=[VAE_ADAPTER])
            self.vae.unload_lora()
            self.vae_lora_modules = []
        if not self.lora_split:
            return
        self.unet.fuse_lora(adapter_names=list(self.lora_split))
        self.unet.unload_lora()
        self.lora_split = {}
