"""The causal per-frame model as one static-shape step function, and its whole-sequence twin.

`StreamingModel.step(spectrum, face, state) -> (outputs, state)` is the whole per-frame
computation (both encoders, one MDVAE step, the audio and visual decoders, the emotion head) for
B streams at once, with the recurrent state passed in and out as explicit tensors. It has no
Python control flow on tensor values, no dynamic shapes and no in-place ops, so `forward` (the
same step with flat tensor arguments) exports with torch.export and ONNX.

`run_sequence(spectra, faces)` computes the same outputs for whole sequences by another path:
encoders, decoders, the emotion head and the w filter over all frames at once, only the GRU
recurrence frame by frame. Both paths agree to float32 rounding (tests/test_model_streaming.py).

`GuardedStream` holds the state for a live run, catches non-finite values (counted, the
stream's state reset, nothing published for that frame) and resets on request.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from streamav.model.config import EmotionHeadConfig, ModelConfig
from streamav.model.inputs import FACE_OFFSET, FACE_SCALE, face_to_model
from streamav.model.mdvae import MDVAE, MDVAEState
from streamav.model.refine import Refiner, RefineState
from streamav.model.vqvae import AudioVQVAE, VisualVQVAE


class State(NamedTuple):
    """Everything a stream carries from one frame to the next (each tensor (B, ...))."""

    h_av: Tensor  # (B, H) the MDVAE's GRU states
    h_a: Tensor
    h_v: Tensor
    w_mean: Tensor  # (B, W) causal posterior of w
    w_var: Tensor
    face_means: Tensor  # (B, 3 n, 64, 64) the identity path's running means of the input crop
    face_weights: Tensor  # (B, n) their weights

    @property
    def mdvae(self) -> MDVAEState:
        return MDVAEState(self.h_av, self.h_a, self.h_v, self.w_mean, self.w_var)

    @property
    def refine(self) -> RefineState:
        return RefineState(self.face_means, self.face_weights)

    @classmethod
    def join(cls, mdvae: MDVAEState, refine: RefineState) -> "State":
        return cls(*mdvae, *refine)


class StepOutputs(NamedTuple):
    """One frame's outputs for B streams (run_sequence: with a time axis, (B, T, ...))."""

    face_hat: Tensor  # (B, 3, 64, 64) denoised face, -0.5..0.5 (the identity path's fusion)
    spectrum_hat: Tensor  # (B, 513) reconstructed power spectrum (same units as the input)
    w_mean: Tensor  # (B, W) causal posterior mean of w
    w_var: Tensor  # (B, W) its variance
    z_av: Tensor  # (B, Zav) posterior means
    z_a: Tensor  # (B, Za)
    z_v: Tensor  # (B, Zv)
    emotion_probs: Tensor  # (B, n_classes)


OUTPUT_NAMES: tuple[str, ...] = StepOutputs._fields
STATE_NAMES: tuple[str, ...] = State._fields
# Names of `forward`'s flat inputs and outputs, for exported graphs (ONNX needs them distinct).
EXPORT_INPUT_NAMES: tuple[str, ...] = ("spectrum", "face", *(f"state_{n}" for n in STATE_NAMES))
EXPORT_OUTPUT_NAMES: tuple[str, ...] = (*OUTPUT_NAMES, *(f"next_{n}" for n in STATE_NAMES))


class EmotionHead(nn.Module):
    """Emotion probabilities from the mean of w: standardise, then logistic regression or an MLP.

    `input_mean` / `input_scale` are buffers set when the head is fitted (few labels, per user);
    until then the head is a real, randomly initialised module.
    """

    def __init__(self, cfg: EmotionHeadConfig, w_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("input_mean", torch.zeros(w_dim))
        self.register_buffer("input_scale", torch.ones(w_dim))
        if cfg.hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(w_dim, cfg.hidden), nn.ReLU(),
                                                nn.Linear(cfg.hidden, cfg.n_classes))
        else:
            self.net = nn.Linear(w_dim, cfg.n_classes)

    def logits(self, w_mean: Tensor) -> Tensor:
        return self.net((w_mean - self.input_mean) * self.input_scale)  # (..., C)

    def forward(self, w_mean: Tensor) -> Tensor:
        return torch.softmax(self.logits(w_mean), dim=-1)  # (..., C)


class StreamingModel(nn.Module):
    """Both VQ-VAEs, the MDVAE and the emotion head, run causally (posterior means)."""

    def __init__(self, cfg: ModelConfig, snap_face_to_codebook: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        # Snap the MDVAE's visual features to the nearest codes before the VQ-VAE decoder (as
        # the paper's code does). Off by default: argmin is discontinuous, so two code paths that
        # differ by rounding can pick different codes; the decoder reads continuous features well.
        self.snap_face_to_codebook = snap_face_to_codebook
        self.audio = AudioVQVAE(cfg.audio)
        self.visual = VisualVQVAE(cfg.visual)
        self.mdvae = MDVAE(cfg.mdvae)
        self.emotion = EmotionHead(cfg.emotion, cfg.mdvae.w_dim)
        self.refine = Refiner(cfg.refine, cfg.mdvae.frame_rate_hz)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.cfg.emotion.labels

    def initial_state(self, batch: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> State:
        """The state of B fresh streams (what `reset` goes back to)."""
        return State.join(self.mdvae.initial_state(batch, device, dtype),
                          self.refine.initial_state(batch, device, dtype))

    def reset(self, state: State, streams: Tensor | None = None) -> State:
        """A copy of `state` with the streams in the bool mask `streams` (B,) reset (all if None)."""
        fresh = self.initial_state(state.h_av.shape[0], state.h_av.device, state.h_av.dtype)
        if streams is None:
            return fresh
        mask = streams.to(torch.bool)
        return State(*(torch.where(mask.reshape(-1, *[1] * (s.dim() - 1)), f, s)
                       for f, s in zip(fresh, state)))

    # -- the step ---------------------------------------------------------------------------------

    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        """spectrum (B, 513) power, face (B, 3, 64, 64) in -0.5..0.5 → (outputs, next state)."""
        x_a = self.audio.encode(spectrum)  # (B, 512)
        x_v = self.visual.encode(face)  # (B, 2048)
        m, next_mdvae = self.mdvae.step(x_a, x_v, state.mdvae)
        next_refine = self.refine.advance(face, state.refine)
        outputs = self._outputs(m.w_mean, m.w_var, m.z_av, m.z_a, m.z_v, m.x_a_hat, m.x_v_hat,
                                self.audio.gain(spectrum), face, x_v, next_refine.face_means)
        return outputs, State.join(next_mdvae, next_refine)

    def forward(self, spectrum: Tensor, face: Tensor, h_av: Tensor, h_a: Tensor, h_v: Tensor,
                w_mean: Tensor, w_var: Tensor, face_means: Tensor, face_weights: Tensor
                ) -> tuple[Tensor, ...]:
        """`step` with flat tensors for export: returns (*OUTPUT_NAMES, *STATE_NAMES)."""
        outputs, state = self.step(spectrum, face, State(h_av, h_a, h_v, w_mean, w_var,
                                                         face_means, face_weights))
        return (*outputs, *state)

    def decoded_faces(self, x_v: Tensor, x_v_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(…, 2048) each → the VQ-VAE's own face of the input and the MDVAE's face (…, 3, 64, 64)."""
        if self.snap_face_to_codebook:
            x_v_hat = self.visual.snap(x_v_hat)
        lead = x_v.shape[:-1]
        both = self.visual.decode(torch.cat([x_v.reshape(-1, x_v.shape[-1]),
                                             x_v_hat.reshape(-1, x_v.shape[-1])]))
        vq_face, mdvae_face = both.clamp(-0.5, 0.5).chunk(2)
        return vq_face.reshape(*lead, 3, 64, 64), mdvae_face.reshape(*lead, 3, 64, 64)

    def _outputs(self, w_mean: Tensor, w_var: Tensor, z_av: Tensor, z_a: Tensor, z_v: Tensor,
                 x_a_hat: Tensor, x_v_hat: Tensor, gain: Tensor, face: Tensor, x_v: Tensor,
                 face_means: Tensor) -> StepOutputs:
        """Decoders, the identity path's fusion and the head on any leading dims (B,) or (B, T)."""
        vq_face, mdvae_face = self.decoded_faces(x_v, x_v_hat)
        flat = (-1, 3, 64, 64)
        face_hat = self.refine.fuse(face.reshape(flat),
                                    face_means.reshape(-1, *face_means.shape[-3:]),
                                    vq_face.reshape(flat), mdvae_face.reshape(flat))
        spectrum_hat = self.audio.decode(x_a_hat, gain)
        return StepOutputs(face_hat.reshape(face.shape), spectrum_hat, w_mean, w_var, z_av, z_a,
                           z_v, self.emotion(w_mean))

    # -- the whole-sequence path ------------------------------------------------------------------

    def run_sequence(self, spectra: Tensor, faces: Tensor, state: State | None = None,
                     chunk_frames: int = 512) -> tuple[StepOutputs, State]:
        """spectra (B, T, 513), faces (B, T, 3, 64, 64) → outputs (B, T, ...) and the final state.

        The causal model over whole sequences, batched over time in chunks of `chunk_frames`
        (bounded memory for any T); equal to stepping frame by frame.
        """
        B, T = spectra.shape[:2]
        if state is None:
            state = self.initial_state(B, spectra.device, spectra.dtype)
        parts: list[StepOutputs] = []
        for start in range(0, T, chunk_frames):
            spec, face = spectra[:, start:start + chunk_frames], faces[:, start:start + chunk_frames]
            x_a = self.audio.encode(spec)  # (B, t, 512), all frames at once
            x_v = self.visual.encode(face)  # (B, t, 2048)
            seq = self.mdvae(x_a, x_v, state.mdvae, sample=False)
            means, refine_state = self.refine.scan(face, state.refine)  # (B, t, 3n, 64, 64)
            parts.append(self._outputs(seq.w_mean, seq.w_var, seq.z_av, seq.z_a, seq.z_v,
                                       seq.x_a_hat, seq.x_v_hat, self.audio.gain(spec), face,
                                       x_v, means))
            state = State.join(seq.state, refine_state)
        return StepOutputs(*(torch.cat(p, 1) for p in zip(*parts))), state

    # -- export -----------------------------------------------------------------------------------

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        """Flat example inputs of `forward` for B streams (random spectra and faces, fresh state)."""
        device = next(self.parameters()).device
        g = torch.Generator().manual_seed(0)
        spectrum = torch.rand(batch, self.cfg.audio.n_bins, generator=g).to(device)
        face = (torch.rand(batch, 3, 64, 64, generator=g) - 0.5).to(device)
        return (spectrum, face, *self.initial_state(batch, device))

    def export(self, batch: int = 1, strict: bool = False) -> "torch.export.ExportedProgram":
        """torch.export of the step at a static batch size (eval mode)."""
        self.eval()
        return torch.export.export(self, self.example_inputs(batch), strict=strict)


# ---------------------------------------------------------------------------------------------
# Live running: state holder with the non-finite guard
# ---------------------------------------------------------------------------------------------

StepFn = Callable[[Tensor, Tensor, State], tuple[StepOutputs, State]]


class GuardedStream:
    """Owns the state of B streams; steps them and never returns a non-finite value.

    A stream whose inputs, outputs or next state hold a NaN or an Inf is counted
    (`nonfinite_count`, per stream in `nonfinite_per_stream`) and its state is reset; the frame
    is then not published: `step` returns None if any stream was bad (`last_valid` has the
    per-stream mask; good streams' states still advance). The guard is plain eager code around
    the step, outside any exported graph; `step_fn` may be any backend with the step's signature.
    """

    def __init__(self, model: StreamingModel, batch: int = 1, step_fn: StepFn | None = None,
                 device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.batch = batch
        self.device = device if device is not None else next(model.parameters()).device
        self.step_fn: StepFn = step_fn if step_fn is not None else model.step
        self.state = model.initial_state(batch, self.device)
        self.nonfinite_count = 0
        self.nonfinite_per_stream = [0] * batch
        self.last_valid = torch.ones(batch, dtype=torch.bool)
        self.frames = 0

    def reset(self, streams: Sequence[int] | None = None) -> None:
        """Back to the initial state: every stream, or only those listed."""
        if streams is None:
            self.state = self.model.initial_state(self.batch, self.device)
            return
        mask = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        mask[list(streams)] = True
        self.state = self.model.reset(self.state, mask)

    @torch.inference_mode()
    def step(self, spectrum: Tensor, face: Tensor) -> StepOutputs | None:
        """spectrum (B, 513), face (B, 3, 64, 64) → outputs, or None if any stream went bad."""
        self.frames += 1
        outputs, state = self.step_fn(spectrum, face, self.state)
        valid = _finite_rows(spectrum) & _finite_rows(face)
        for tensor in (*outputs, *state):
            valid &= _finite_rows(tensor)
        self.last_valid = valid.cpu()
        if bool(valid.all()):
            self.state = state
            return outputs
        bad = (~self.last_valid).nonzero().flatten().tolist()
        self.nonfinite_count += len(bad)
        for i in bad:
            self.nonfinite_per_stream[i] += 1
        self.state = self.model.reset(state, ~valid)
        return None


def _finite_rows(x: Tensor) -> Tensor:
    """(B, ...) → (B,) True where every value of the row is finite."""
    return torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)


# ---------------------------------------------------------------------------------------------
# Face crop conversions
# ---------------------------------------------------------------------------------------------

def face_tensor_from_rgb(crop_rgb: np.ndarray) -> Tensor:
    """(64, 64, 3) or (B, 64, 64, 3) uint8 RGB → (B, 3, 64, 64) float32 in -0.5..0.5."""
    arr = np.asarray(crop_rgb)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 RGB, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(face_to_model(arr)))


def face_rgb_from_tensor(face: Tensor) -> np.ndarray:
    """(B, 3, H, W) in -0.5..0.5 → (B, H, W, 3) uint8 RGB (the inverse of face_to_model)."""
    scaled = ((face.detach().float().cpu() + FACE_OFFSET).clamp(0.0, 1.0) / FACE_SCALE).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()
