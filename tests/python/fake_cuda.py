"""The CUDA code path, run on the CPU: fake tensors whose device is ``cuda``, and a count of what the GPU would do.

A ``FakeTensor`` made on device ``cuda`` inside a ``FakeTensorMode`` carries the shapes, dtypes, strides and devices
that CUDA kernels produce (PyTorch's meta kernels mirror them: an ``rfft2`` over dims (0, 1) of a CUDA matrix is
column-major, where the CPU's is row-major). Calling an op's CUDA kernel on such tensors
(``op.redispatch(CUDA, ...)``) runs its C++ ATen calls on them, and :class:`Counter`, a dispatch mode entered inside
the fake mode, sees every ATen op those calls dispatch:

- *launches*: ops that run a kernel on the device (not views, not uninitialised allocations, not sparse tensor
  construction); the count of dispatched ATen ops, which is what a GPU launches up to ops that launch several
  kernels (cuFFT plans, sorts) — deterministic, not a timing;
- *host syncs*: ops whose result the host must read (``_unique2``, ``nonzero``, ``item``, ``equal``, ...). Fake
  tensors have no values, so the counter answers these itself (sizes as large as the input: an upper bound) and
  records them;
- device mixing: every tensor argument of every op must be on ``cuda`` (0-dim CPU scalars and explicit transfers
  excepted).

A sparse CSR tensor made from fake members is a real sparse CUDA tensor whose kernels a CPU-only torch lacks: the
counter answers the sparse ops (``mm`` with such an operand, ``sparse_sampled_addmm``, ``values``) from the members'
metadata, checking their devices and dtypes, counted as one launch each.

Limits in a CPU-only torch: autograd's engine needs a CUDA device guard, so ``.backward()`` through fake CUDA tensors
aborts the process; tests call the backward ops' CUDA kernels directly. Python-level tensor indexing (``t[0]``) and
Python factories of sparse tensors ask for a CUDA device too: use ``torch.select`` and friends.
"""
from __future__ import annotations

import contextlib
from collections import Counter as Tally
from typing import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)

# Host synchronisations: the host reads a result (a size or a value) before it can go on.
SYNC_OPS = {
    aten._unique2, aten.unique_dim, aten.unique_consecutive, aten._unique, aten.nonzero, aten.masked_select,
    aten._local_scalar_dense, aten.equal, aten.is_nonzero, aten.repeat_interleave, aten.bincount,
}
# Ops that dispatch but launch no kernel: allocations without initialisation and sparse tensor construction.
NO_KERNEL_OPS = {
    aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided, aten.lift_fresh,
    aten._sparse_csr_tensor_unsafe, aten.sparse_compressed_tensor, aten._sparse_compressed_tensor_unsafe,
    aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset, aten.is_same_size,
    aten._has_compatible_shallow_copy_type, aten.set_,
}

# Ops that move data between devices on purpose.
TRANSFER_OPS = {aten.lift_fresh, aten._to_copy, aten.copy_}


def _is_view(func) -> bool:
    return func.is_view or func._overloadpacket in (aten.values, aten.crow_indices, aten.col_indices, aten.detach,
                                                    aten._reshape_alias, aten._unsafe_view, aten.alias,
                                                    aten.view_as_real,
                                                    aten.view_as_complex, aten.real, aten.imag)


class Counter(TorchDispatchMode):
    """Records, per ATen op, the launches and host syncs of everything dispatched while it is active (entered inside
    a FakeTensorMode). Calls of ``torch.ops.fourierft.*`` that reach it (the Python layer calling the ops) run the
    op's CUDA kernel, whose ATen calls are counted too."""

    def __init__(self, parent: "Counter | None" = None):
        super().__init__()
        self.launches: Tally = parent.launches if parent else Tally()
        self.syncs: Tally = parent.syncs if parent else Tally()
        self.mixed: list = parent.mixed if parent else []

    def total(self) -> tuple[int, int]:
        return sum(self.launches.values()), sum(self.syncs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        name = str(packet).removeprefix("aten.")
        flat, _ = tree_flatten((args, kwargs))
        # Explicit transfers (torch.tensor(..., device="cuda"), .to("cuda")) may take CPU tensors; nothing else may.
        for t in flat if packet not in TRANSFER_OPS and func.namespace == "aten" else ():
            if isinstance(t, torch.Tensor) and t.device.type != "cuda" and not (t.dim() == 0 and t.device.type == "cpu"):
                self.mixed.append((name, t.device, tuple(t.shape)))
        if func.namespace == "fourierft":
            with Counter(self):
                return func.redispatch(CUDA, *args, **kwargs)
        if packet in SYNC_OPS:
            self.syncs[name] += 1
            return _answer_sync(func, args, kwargs)
        sparse = self._answer_sparse(func, args, kwargs)
        if sparse is not None:
            return sparse
        if func.namespace == "aten" and not _is_view(func) and packet not in NO_KERNEL_OPS and not name.startswith("sym_"):
            self.launches[name] += 1
        return func(*args, **kwargs)


    def _answer_sparse(self, func, args, kwargs):
        """mm with a sparse CSR operand, sparse_sampled_addmm and values(): answered from the sparse tensors'
        metadata (their member tensors are fake; their own kernels exist only in CUDA builds)."""
        packet = func._overloadpacket
        sparse = [a for a in args if isinstance(a, torch.Tensor) and a.layout == torch.sparse_csr]
        if not sparse:
            return None
        name = str(packet).removeprefix("aten.")
        for s in sparse:
            values = _csr_member(aten.values, s)
            crow, col = _csr_member(aten.crow_indices, s), _csr_member(aten.col_indices, s)
            if not (values.device.type == crow.device.type == col.device.type == "cuda"):
                self.mixed.append((name, "sparse members", values.device, crow.device, col.device))
        if packet is aten.values:
            return _csr_member(aten.values, args[0])
        if packet is aten.mm:
            a, b = args
            assert a.layout == torch.strided and b.layout == torch.sparse_csr, "mm: dense @ sparse expected"
            assert a.dtype == _csr_member(aten.values, b).dtype, f"mm dtypes {a.dtype} and {b.dtype}"
            self.launches["mm(sparse)"] += 1
            return torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
        if packet is aten.sparse_sampled_addmm:
            mask, a, b = args[:3]
            assert a.dtype == b.dtype == _csr_member(aten.values, mask).dtype, "sparse_sampled_addmm dtypes"
            assert (mask.shape[0], mask.shape[1]) == (a.shape[0], b.shape[1]), "sparse_sampled_addmm shapes"
            self.launches[name] += 1
            return mask  # same pattern and dtype: all the caller reads
        raise NotImplementedError(f"fake_cuda: no answer for {func} on a sparse CSR operand")


_SPARSE_CSR_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.SparseCsrCPU)


def _csr_member(getter, t: torch.Tensor) -> torch.Tensor:
    """A member of a sparse CSR tensor through the CPU getter kernel (it only returns the field)."""
    return getter.default.redispatch(_SPARSE_CSR_CPU, t)


def _answer_sync(func, args, kwargs):
    """A data-dependent op's result with sizes as large as its input (what the host would have read)."""
    packet = func._overloadpacket
    x = args[0]
    if packet is aten._local_scalar_dense:
        return 0 if not x.is_floating_point() else 0.0
    if packet in (aten.equal, aten.is_nonzero):
        return True
    if packet is aten._unique2:
        return_inverse = args[2] if len(args) > 2 else kwargs.get("return_inverse", False)
        return_counts = args[3] if len(args) > 3 else kwargs.get("return_counts", False)
        n = x.numel()
        return (torch.empty(n, dtype=x.dtype, device=x.device),
                torch.empty(x.shape if return_inverse else (0,), dtype=torch.long, device=x.device),
                torch.empty(n if return_counts else 0, dtype=torch.long, device=x.device))
    if packet is aten.nonzero:
        return torch.empty(x.numel(), x.dim(), dtype=torch.long, device=x.device)
    if packet is aten.masked_select:
        return torch.empty(x.numel(), dtype=x.dtype, device=x.device)
    raise NotImplementedError(f"fake_cuda: no fake answer for the host-synchronising op {func}")


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """A FakeTensorMode in which ``torch.empty(..., device="cuda")`` makes fake CUDA tensors."""
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        yield mode


@contextlib.contextmanager
def counting() -> Iterator[Counter]:
    """Counts launches and host syncs of what runs inside the block (to be entered inside :func:`fake_cuda`)."""
    counter = Counter()
    with counter:
        yield counter


def cuda_tensor(*shape, dtype=torch.float32, requires_grad=False) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype, device="cuda")
    return t.requires_grad_(True) if requires_grad else t


def call_cuda(op, *args):
    """The CUDA kernel of ``op`` (a ``torch.ops.fourierft.*`` overload) on fake tensors."""
    return op.redispatch(CUDA, *args)


def to_fake(module: torch.nn.Module, dtype: torch.dtype | None = None, device: str = "cuda",
            float32: tuple[str, ...] = ()) -> torch.nn.Module:
    """``module`` (built on any device, e.g. ``"meta"``) with every parameter and buffer replaced by an uninitialised
    fake tensor on ``device`` of its shape, floating point ones in ``dtype`` if given, except parameters whose name
    contains one of ``float32`` (PEFT keeps adapters in float32 on a half-precision model); PEFT's FourierFT entry
    indices (a plain dict) too. Call inside a FakeTensorMode. ``Module.to``/``to_empty`` cannot swap real parameters
    for fake ones, and initialisers need a CUDA generator."""
    def dtype_of(t: torch.Tensor, name: str) -> torch.dtype:
        if not t.is_floating_point():
            return t.dtype
        return torch.float32 if any(k in name for k in float32) else (dtype or t.dtype)

    for prefix, owner in module.named_modules():
        for name, p in list(owner._parameters.items()):
            if p is not None:
                full = f"{prefix}.{name}" if prefix else name
                owner._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=dtype_of(p, full), device=device), requires_grad=p.requires_grad)
        for name, b in list(owner._buffers.items()):
            if b is not None:
                owner._buffers[name] = torch.empty(b.shape, dtype=dtype_of(b, ""), device=device)
        indices = owner.__dict__.get("indices")
        if isinstance(indices, dict):
            for name, t in list(indices.items()):
                indices[name] = torch.empty(t.shape, dtype=t.dtype, device=device)
    return module


def fake_peft_linear(out_features=3072, in_features=3072, n=1000, dtype=torch.bfloat16, adapters=("default",),
                     bias=True, scaling=150.0):
    """A PEFT model of one nn.Linear (fourierft's layer) with fake CUDA parameters: the model dtype ``dtype``, PEFT's
    float32 spectra, frozen. Built on "meta" (PEFT moves new adapters with .to(device), which aborts on fake CUDA, and
    compares index tensors when adapters are added, which needs values), then swapped to fake CUDA; call inside
    :func:`fake_cuda`. Returns (model, layer)."""
    import fourierft

    with unset_fake_temporarily():
        net = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=bias, device="meta"))
        config = fourierft.FourierFTConfig(target_modules=["0"], n_frequency=n, scaling=scaling)
        model = fourierft.get_peft_model(net, config, adapter_name=adapters[0])
        for name in adapters[1:]:
            model.add_adapter(name, config)
    to_fake(model, dtype, float32=("fourierft_spectrum",))
    layer = model.base_model.model[0]
    for spectrum in layer.fourierft_spectrum.values():
        spectrum.requires_grad_(False)
    return model, layer
