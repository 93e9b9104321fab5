"""What the machine computes fast: the CPU's matrix instructions, its BLAS, the GPU. Named in every benchmark header,
and the one machine property a filter backend choice depends on (bf16 autocast on a CPU with bf16 matrix units:
see `filter_backends.resolve_backend`). Read once; a machine does not change while a process runs."""
import functools
import platform
from typing import FrozenSet, List

import torch

__all__ = ['cpu_flags', 'cpu_name', 'matrix_features', 'cpu_has_bf16_units', 'describe_device']

# instruction-set flags (Linux /proc/cpuinfo names) that decide matrix speed, with the names vendors use
_MATRIX_FLAGS = (
    ('avx2', 'AVX2'), ('avx512f', 'AVX-512'), ('avx512_vnni', 'AVX512-VNNI'), ('avx512_bf16', 'AVX512-BF16'),
    ('avx512_fp16', 'AVX512-FP16'), ('amx_tile', 'AMX'), ('amx_bf16', 'AMX-BF16'), ('amx_fp16', 'AMX-FP16'),
    ('asimd', 'NEON'), ('sve', 'SVE'), ('bf16', 'BF16'), ('i8mm', 'I8MM'),
)
# bf16 dot-product instructions: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension
_BF16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16', 'bf16'})


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict:
    info = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                info.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    return info


@functools.lru_cache(maxsize=None)  # asked on every bf16 filter call (the auto rule)
def cpu_flags() -> FrozenSet[str]:
    """The CPU's instruction-set flags ('flags' on x86, 'Features' on Arm); empty where /proc/cpuinfo is not."""
    info = _cpuinfo()
    return frozenset((info.get('flags') or info.get('Features') or '').split())


def cpu_name() -> str:
    return _cpuinfo().get('model name') or platform.processor() or platform.machine()


def matrix_features() -> List[str]:
    """The matrix-relevant instruction sets the CPU has, e.g. ['AVX2', 'AVX-512', 'AVX512-BF16']."""
    flags = cpu_flags()
    return [name for flag, name in _MATRIX_FLAGS if flag in flags]


def cpu_has_bf16_units() -> bool:
    """Whether the CPU multiplies bf16 matrices natively; without, bf16 matrix products are emulated (slower than
    float32). Unknown (no /proc/cpuinfo) counts as no."""
    return bool(cpu_flags() & _BF16_FLAGS)


def _blas() -> str:
    names = [n for n, on in (('MKL', torch.backends.mkl.is_available()),
                             ('oneDNN', torch.backends.mkldnn.is_available())) if on]
    for part in torch.__config__.show().replace(',', ' ').split():
        if part.startswith('BLAS_INFO=') and part.split('=', 1)[1].upper() not in ('MKL', ''):
            names.insert(0, part.split('=', 1)[1])
    return ' + '.join(names) or 'unknown BLAS'


def describe_device(device: torch.device) -> str:
    """One line naming the device and what decides its matrix speed: the CPU model, its matrix instructions, torch's
    BLAS and thread count; or the GPU and its compute capability."""
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        return f'{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})'
    features = ', '.join(matrix_features()) or 'no matrix features known'
    return f'{cpu_name()} ({features}), {_blas()}, {torch.get_num_threads()} threads'
