"""Decoder layers whose weights live in host memory, run one at a time on a device at bus speed.

A model too big for its GPU is calibrated layer by layer. Moving a layer with ``layer.to(device)``
and back costs a pageable copy each way and leaves the GPU idle while it runs. ``LayerStream``
instead keeps two device buffers and two page-locked host buffers, each the size of the largest
layer: while layer ``i`` computes, layer ``i + 1`` is packed into a host buffer and copied to the
device on a side stream; the host weights are never copied back (calibration does not change
them), a layer's parameters just point at the device buffer while it runs.

On a CPU "device" the same packing runs without streams or page-locking, so it is tested
everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

ALIGN = 64  # bytes: every tensor in a packed buffer starts at a multiple of this

# A model too big for its device stays on the CPU; load_model names the device it is calibrated on here.
CALIB_DEVICE_ATTR = "selfprune_calib_device"


def calibration_device(model) -> str | None:
    """The device ``load_model`` named for calibrating ``model`` one layer at a time, if any."""
    return getattr(model, CALIB_DEVICE_ATTR, None)


def _tensors(layer: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
    """Every parameter and buffer of ``layer`` once: (owner, name, is_parameter, tensor)."""
    seen, out = set(), []
    for module in layer.modules():
        for is_param, table in ((True, module._parameters), (False, module._buffers)):
            for name, t in table.items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append((module, name, is_param, t))
    return out


def _layout(tensors) -> tuple[list[int], int]:
    offsets, size = [], 0
    for *_, t in tensors:
        offsets.append(size)
        size += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    return offsets, size


def _view(buffer: torch.Tensor, offset: int, t: torch.Tensor) -> torch.Tensor:
    nbytes = t.numel() * t.element_size()
    return buffer[offset : offset + nbytes].view(t.dtype).view(t.shape)


class LayerStream:
    """``with stream.resident(i): layer_i(...)`` runs layer ``i`` with its weights on ``device``;
    call it for 0, 1, 2, ... in order. The next layer's copy overlaps this one's compute."""

    def __init__(self, layers: list[nn.Module], device: torch.device):
        self.layers, self.device = layers, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.tensors = [_tensors(layer) for layer in layers]
        # a parameter's host storage, to point it back at after its layer ran
        self._host_data = {id(t): t.data for ts in self.tensors for _, _, is_param, t in ts if is_param}
        self.layouts = [_layout(t) for t in self.tensors]
        size = max((s for _, s in self.layouts), default=0)
        self.host = [torch.empty(size, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2)]
        self.dev = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.copied: list = [None, None]  # per slot: the event of its last host-to-device copy
        self.computed: list = [None, None]  # per slot: the event after the last compute that read it
        self._next = 0

    def _prefetch(self, i: int) -> None:
        slot = i % 2
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the host buffer is free again once its last copy is done
        offsets, size = self.layouts[i]
        host, dev = self.host[slot], self.dev[slot]
        for offset, (*_, t) in zip(offsets, self.tensors[i]):
            _view(host, offset, t).copy_(t)  # packing runs on the host while the device computes
        if not self.cuda:
            dev[:size].copy_(host[:size])
            return
        with torch.cuda.stream(self.copy_stream):
            if self.computed[slot] is not None:
                self.copy_stream.wait_event(self.computed[slot])  # the device buffer's last reader is done
            dev[:size].copy_(host[:size], non_blocking=True)
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record(self.copy_stream)

    @contextmanager
    def resident(self, i: int):
        if i != self._next:
            raise ValueError(f"layers stream in order: expected layer {self._next}, got {i}")
        if i == 0:
            self._prefetch(0)
        slot = i % 2
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
        offsets, _ = self.layouts[i]
        for offset, (owner, name, is_param, t) in zip(offsets, self.tensors[i]):
            on_device = _view(self.dev[slot], offset, t)
            if is_param:
                t.data = on_device
            else:
                owner._buffers[name] = on_device
        try:
            yield self.layers[i]
        finally:
            for owner, name, is_param, t in self.tensors[i]:
                if is_param:
                    t.data = self._host_data[id(t)]
                else:
                    owner._buffers[name] = t
            if self.cuda:
                self.computed[slot] = torch.cuda.Event()
                self.computed[slot].record(torch.cuda.current_stream(self.device))
            self._next = i + 1
            if i + 1 < len(self.layers):
                self._prefetch(i + 1)
