"""The mutation check: breaks the library on purpose, one mutation at a time, and fails if the tests meant to guard
each change still pass ("a survivor"). A test earns its place by being able to fail; this keeps them honest.

    .venv/bin/python scripts/mutation_check.py            # every mutation (36; about 3 min on 2 cores)
    .venv/bin/python scripts/mutation_check.py --ci       # CI's table (scripts/test.sh): every Python mutation and
                                                          # the C++ ones marked ci=True (the others guard speed
                                                          # only; run the full table after changing C++)
    .venv/bin/python scripts/mutation_check.py --python   # the Python mutations only (nothing compiled)
    .venv/bin/python scripts/mutation_check.py --list     # the table
    .venv/bin/python scripts/mutation_check.py --only "cost model"   # the mutations whose name contains the text
    .venv/bin/python scripts/mutation_check.py --keep DIR # keep each mutant's build and test log in DIR

Each mutation replaces one exact snippet of a source file (it must occur exactly once, so a mutation whose code
moved fails loudly instead of testing nothing) and names the tests that must catch it. The checkout and its build
folders are never written:
- Python mutations are applied to a copy of the installed package (.venv's site-packages/fourierft), which the
  tests import first.
- C++ mutations are compiled in a folder of their own with the compile command ninja recorded for the checkout's
  build (build/python, where bootstrap.sh builds the library and the tools) and linked there with the checkout's other objects. The
  GoogleTest binary loads the mutant library through LD_LIBRARY_PATH (its RUNPATH yields to it; checked with ldd);
  pytest runs with the mutant library in the package copy, or with FOURIERFT_<TOOL> naming the mutant tool.
- Tests run in warm workers (torch, PEFT and transformers imported once; each run in a forked child), two
  mutations at a time.
Needs scripts/bootstrap.sh to have run (the .venv, the package, build/).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclasses.dataclass
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str
    new: str
    pytest: tuple[str, ...] = ()
    gtest: str = ""  # a --gtest_filter for build/tests/fourierft_tests
    ci: bool = False  # a C++ mutation that --ci (CI's table) runs too; every Python one does

    @property
    def language(self) -> str:
        return "python" if self.file.endswith(".py") else "cpp"


MUTATIONS = [
    # ---- Python ------------------------------------------------------------------------------------------
    # One check serves both delta_W caches (the spectrum's dtype for the adapter path, the model's for GPU inference).
    Mutation("delta_W caches served without comparing the spectrum's values", "python/fourierft/layer.py",
             "        return delta if self._key_matches(adapter, spectrum, key, delta) else None",
             "        return delta",
             pytest=("tests/python/test_routes.py::test_inference_caches_are_used_and_never_stale",)),
    Mutation("delta_W cache key ignores the version counter (optimizer steps, loads under no_grad)",
             "python/fourierft/layer.py",
             "        return (tensor is spectrum and storage == _storage_id(spectrum) and version == spectrum._version",
             "        return (tensor is spectrum and storage == _storage_id(spectrum) and True",
             pytest=("tests/python/test_fake_cuda.py::test_layer_inference_cache_sees_changes_without_syncing",)),
    Mutation("delta_W cache key compares values on the GPU too (a host sync per call)", "python/fourierft/layer.py",
             '        values = spectrum.detach().clone() if spectrum.device.type == "cpu" else None',
             "        values = spectrum.detach().clone()",
             pytest=("tests/python/test_fake_cuda.py::test_layer_inference_launches_base_gemm_plus_one_and_never_syncs",)),
    Mutation("caches built under FSDP (a gathered weight-sized copy per layer on every rank)",
             "python/fourierft/layer.py",
             "    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)",
             "    return True",
             pytest=("tests/python/integration/test_fsdp_caches.py",)),
    Mutation("W + delta_W cache ignores W's fingerprint", "python/fourierft/layer.py",
             "            if (w_stamp == stamp and merged.dtype == weight.dtype",
             "            if (True and merged.dtype == weight.dtype",
             pytest=("tests/python/test_layer.py",)),
    Mutation("mixed batches drop every adapter's contribution", "python/fourierft/layer.py",
             "        if name == BASE_ADAPTER or name not in layer.fourierft_spectrum:",
             "        if True:",
             pytest=("tests/python/test_serving.py",)),
    Mutation("beam search repeats names on the encoder of a causal LM", "python/fourierft/model.py",
             "    return None if encoder is model else encoder",
             "    return encoder",
             pytest=("tests/python/test_serving.py::test_mixed_batch_beam_search_on_a_causal_lm",)),
    Mutation("hotswap copies spectra only", "python/fourierft/serving.py",
             "        targets[live] = value",
             "        targets[live] = value if live.endswith(_SPECTRUM + '.' + adapter_name) else state[live].detach().clone()",
             pytest=("tests/python/test_serving.py::test_hotswap_copies_heads_and_biases_too",)),
    Mutation("a failed injection is not rolled back", "python/fourierft/rollback.py",
             "    except BaseException:\n        state.restore()\n        raise",
             "    except BaseException:\n        raise",
             pytest=("tests/python/test_bad_input.py::test_add_adapter_too_large_for_a_later_layer_is_rolled_back",)),
    Mutation("config fields not validated by the tuner", "python/fourierft/model.py",
             '        validate_config(self.peft_config[adapter_name], f"adapter {adapter_name!r}")',
             "        pass",
             pytest=("tests/python/test_bad_input.py",)),
    Mutation("config fields that change the math accepted", "python/fourierft/config.py",
             "        if neutral is _NO_NEUTRAL or value != neutral:\n            _refuse_field(where,",
             "        if False:\n            _refuse_field(where,",
             pytest=("tests/python/test_bad_input.py::test_get_peft_model_refuses_fields_that_change_the_math",)),
    Mutation("an older PEFT than the supported range accepted at import", "python/fourierft/config.py",
             "    if version < lowest:\n        raise ImportError(",
             "    if False:\n        raise ImportError(",
             pytest=("tests/python/integration/test_peft_versions.py::test_import_refuses_an_older_peft_and_warns_under_a_newer_one",)),
    Mutation("unknown adapter names ignored (merges, the tuner's set_adapter and set_requires_grad)",
             "python/fourierft/model.py",
             "        if adapter_names is None:\n            return\n        names = [adapter_names]",
             "        if True:\n            return\n        names = [adapter_names]",
             pytest=("tests/python/test_bad_input.py::test_unknown_adapter_names_are_refused_everywhere_and_change_nothing",)),
    Mutation("checkpoint spectra for untargeted modules accepted", "python/fourierft/checkpoint.py",
             '            if config.target_modules not in (None, "all-linear") and not check_target_module_exists(config, path):',
             "            if False:",
             pytest=("tests/python/test_bad_input.py::test_loading_a_spectrum_for_a_module_the_config_does_not_target",)),
    Mutation("loading an adapter does nothing (a resumed Trainer run starts from the fresh adapter)",
             "python/fourierft/__init__.py",
             "from .model import (",
             "import peft as _peft\n_peft.PeftModel.load_adapter = lambda self, *args, **kwargs: None\n"
             "from .model import (",
             pytest=("tests/python/integration/test_trainer.py",)),
    Mutation("merge into a quantized base adds delta_W to the packed data (PEFT's merge)", "python/fourierft/layer.py",
             "        if quantized.quantization_of(base) is None:\n            return super().merge(",
             "        if True:\n            return super().merge(",
             pytest=("tests/python/test_quantized.py::test_merge_and_unload_requantizes_with_the_layers_settings",)),
    Mutation("bitsandbytes' CPU-repacked 4-bit layout read as the standard one", "python/fourierft/quantized.py",
             '        if getattr(state, "packing_format_for_cpu", False):  # double quantization already undone there',
             "        if False:",
             pytest=("tests/python/test_quantized.py::test_dequantized_weight_reads_every_layout_without_changing_it",)),
    Mutation("an inference cache over a quantized base", "python/fourierft/layer.py",
             "        caching = not training and _caching_allowed() and quantized.quantization_of(self.get_base_layer()) is None",
             "        caching = not training and _caching_allowed()",
             pytest=("tests/python/test_quantized.py::test_inference_adds_to_the_quantized_output_and_keeps_no_cache",)),
    Mutation("train() leaves bitsandbytes' CPU layout (which cannot train)", "python/fourierft/model.py",
             "        if mode:\n            quantized.standard_layout(self.model)",
             "        if False:\n            quantized.standard_layout(self.model)",
             pytest=("tests/python/test_quantized.py::test_train_after_an_eval_forward_restores_the_standard_layout_exactly",)),
    Mutation("distributed save keeps FSDP1's wrapper segments (an adapter without tensors)",
             "python/fourierft/distributed.py",
             "            yield _peft_key(name), module",
             "            yield name, module",
             pytest=("tests/python/integration/test_distributed_training.py",)),
    Mutation("a merge of an FSDP-sharded model is not refused", "python/fourierft/distributed.py",
             "    name = sharded_parameter(model)\n    if name is not None:",
             "    name = sharded_parameter(model)\n    if False:",
             pytest=("tests/python/integration/test_distributed_training.py",)),
    Mutation("param_groups puts everything in one group", "python/fourierft/optim.py",
             '        if "fourierft_spectrum" in name:',
             '        if True:',
             pytest=("tests/python/test_optim.py",)),
    # ---- C++ ---------------------------------------------------------------------------------------------
    Mutation("half-precision gradients negated in the CPU backward", "src/ops/cpu/spectral_linear_cpu.cpp",
             "  if (need_grad_x) grad_x = gx2d.to(x.scalar_type()).view(grad_x_shape);\n  return {grad_x, grad_spectrum};",
             "  if (need_grad_x) grad_x = gx2d.to(x.scalar_type()).view(grad_x_shape);\n"
             "  if (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) {\n"
             "    if (need_grad_x) grad_x = grad_x.neg();\n"
             "    if (need_grad_spectrum) grad_spectrum = grad_spectrum.neg();\n  }\n"
             "  return {grad_x, grad_spectrum};",
             pytest=("tests/python/test_routes.py::test_spectral_linear_half_precision_matches_float64",)),
    Mutation("mixed-dtype ops.linear drops the adapter's share of grad_x", "src/ops/cpu/linear_cpu.cpp",
             "    if (need_grad_x) grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).add_(gx).to(x.scalar_type());",
             "    if (need_grad_x) grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).to(x.scalar_type());",
             pytest=("tests/python/test_ops.py::test_linear_mixed_dtypes_match_float64_forward_and_gradients",)),
    Mutation("dense route of a half-precision model drops the adapter", "src/ops/generic.cpp",
             "  return {at::linear(x2d, weight, bias).addmm_(x2d, operand.t()), operand};",
             "  return {at::linear(x2d, weight, bias), operand};",
             pytest=("tests/python/test_routes.py::test_every_route_matches_float64",),
             gtest="FourierFTLinear.HalfPrecision*", ci=True),
    Mutation("spectrum gradient reads the rfft2 of g^T x as row-major (the CUDA crash)", "src/ops/generic.cpp",
             "  const auto spec = at::fft_rfft2(outer, c10::nullopt, {0, 1});",
             "  const auto spec = at::fft_rfft2(outer, c10::nullopt, {0, 1}).view({-1}).view(\n"
             "      {plan.out_features, plan.in_features / 2 + 1});",
             pytest=("tests/python/test_fake_cuda.py::test_spectrum_gradient_of_a_wide_layer_no_longer_crashes",), ci=True),
    Mutation("index plans rebuilt on every call", "src/ops/index_plan.cpp",
             "            e.version == version) {",
             "            e.version == version && false) {",
             pytest=("tests/python/test_fake_cuda.py::test_training_step_launches_and_syncs_are_pinned",
                     "tests/python/test_fake_cuda.py::test_spectral_patterns_are_built_once_per_indices_tensor")),
    Mutation("keep_delta: the backward rebuilds delta_W although the forward kept it", "src/ops/generic.cpp",
             "          kept ? *dense_operand : dense_operand_of(x.scalar_type(), weight, spectrum, *plan, scaling);",
             "          dense_operand_of(x.scalar_type(), weight, spectrum, *plan, scaling);",
             pytest=("tests/python/test_fake_cuda.py::test_training_step_launches_and_syncs_are_pinned",)),
    Mutation("keep_delta: the forward keeps nothing", "src/ops/cost_model.cpp",
             "  if (!keep_delta_enabled.load(std::memory_order_relaxed) || !call.training) return false;",
             "  return false;",
             pytest=("tests/python/test_routes.py::test_kept_dense_operand_matches_float64_and_is_kept",)),
    Mutation("C++ delta_W cache never compares values", "src/layer.cpp",
             "    if (entry.values.sizes() != spectrum.sizes() || !torch::equal(entry.values, spectrum)) return {};",
             "",
             gtest="FourierFTLinear.*:Threads*:*Cache*", ci=True),
    Mutation("C++ forward adds only the first of several active adapters", "src/layer.cpp",
             "    result = result + adapter_forward(name, x).to(result.scalar_type());\n  }",
             "    result = result + adapter_forward(name, x).to(result.scalar_type());\n    break;\n  }",
             gtest="FourierFTLinear.SetAdapterControlsGradAndTwoActiveAdaptersAdd:FourierFTLinear.SeveralAdapters*:"
                   "ModelTest.DisableAdapterGuardAndTwoAdaptersAdd"),
    Mutation("merge CLI --dtype writes the base weights unmerged", "tools/merge.cpp",
             "      if (change != plan.changes.end()) tensor = merged(info.name, tensor, change->second, config);",
             "      if (change != plan.changes.end() && options.dtype == \"auto\") {\n"
             "        tensor = merged(info.name, tensor, change->second, config);\n      }",
             pytest=("tests/python/integration/test_merge_cli.py::test_dtype_option_casts_and_updates_the_config",)),
    Mutation("C++ unload() unmerges first", "src/model.cpp",
             "  for (auto& [name, layer] : all_layers()) layer->clear_adapters();",
             "  for (auto& [name, layer] : all_layers()) {\n    if (layer->merged()) layer->unmerge();\n"
             "    layer->clear_adapters();\n  }",
             gtest="Table/PeftSemantics.*:ModelTest.Unload*"),
    Mutation("C++ add_adapter does not plan before changing layers (n too large for a later layer)", "src/model.cpp",
             "    TORCH_CHECK_VALUE(match.n_frequency > 0 && match.n_frequency <= size,",
             "    if (!plan.empty()) throw c10::ValueError({__func__, __FILE__, 0}, \"late failure\");\n"
             "    TORCH_CHECK_VALUE(match.n_frequency > 0 && match.n_frequency <= size,",
             gtest="Model.FailedCalls*"),
    Mutation("GPU cost model takes the dearer route", "src/ops/cost_model.cpp",
             "  return costs.spectral < costs.dense ? LinearPath::Spectral : LinearPath::Dense;",
             "  return costs.spectral > costs.dense ? LinearPath::Spectral : LinearPath::Dense;",
             pytest=("tests/python/test_routes.py::test_route_estimates_are_what_the_routes_are_picked_by",),
             gtest="CostModel.*", ci=True),
    Mutation("GPU cost model forgets the host's cost per launch (the docs' tables move)",
             "src/ops/cost_model.cpp",
             "constexpr double kGpuHostNsPerLaunch = 14000.0;",
             "constexpr double kGpuHostNsPerLaunch = 0.0;",
             pytest=("tests/python/integration/test_docs.py::test_cost_model_tables_are_what_the_cost_model_says",)),
]


def run(command, env=None, timeout=1800) -> bool:
    """True when the command passed (the tests caught nothing)."""
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode == 0


def apply(text: str, mutation: Mutation) -> str:
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation '{mutation.name}': the snippet occurs {count} times in {mutation.file} "
                         "(expected once); update the table")
    return text.replace(mutation.old, mutation.new)


# ---- pytest, warm -----------------------------------------------------------------------------------------------
# A fresh interpreter spends ~6 s importing torch, PEFT and transformers, most of a Python mutation's time. A worker
# imports them once and runs each request in a forked child that imports fourierft (the package copy) itself.

def serve() -> None:
    """The worker (``--serve``): one JSON request per line on stdin, one JSON answer per line on stdout."""
    import peft  # noqa: F401
    import pytest
    import torch  # noqa: F401
    import transformers  # noqa: F401
    if "fourierft" in sys.modules:
        raise SystemExit("the worker imported fourierft before forking: the children would share it")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: its own process group (a timeout kills what it started too), output to a log
            code = 3
            try:
                os.setpgrp()
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.environ.update(request["env"])
                sys.path.insert(0, request["site"])
                import fourierft
                if not fourierft.__file__.startswith(request["site"]):
                    print(f"imported {fourierft.__file__}, not the package copy under {request['site']}")
                    code = 4
                else:
                    code = int(pytest.main(request["args"]))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                answer = {"returncode": os.waitstatus_to_exitcode(status)}
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                answer = {"returncode": None, "timeout": True}
                break
            time.sleep(0.05)
        print(json.dumps(answer), flush=True)


class Worker:
    """One warm pytest worker and the package copy its requests import."""

    def __init__(self, site: pathlib.Path):
        self.site = site
        self.log = site.parent / "worker.log"  # its own messages (the children's go to each request's log)
        with self.log.open("w") as log:
            self.process = subprocess.Popen([str(PYTHON), str(pathlib.Path(__file__).resolve()), "--serve"],
                                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True)

    def pytest(self, tests, log: pathlib.Path, env: dict | None = None, timeout: float = 1800) -> bool:
        """True when the tests passed (caught nothing). Their output goes to ``log``."""
        request = {"args": ["-x", "-q", "-p", "no:cacheprovider", *tests], "site": str(self.site), "log": str(log),
                   "env": {"PYTHONPATH": str(self.site), "HF_HUB_OFFLINE": "1", **(env or {})}, "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the pytest worker died: {self.log.read_text()[-3000:]}")
        answer = json.loads(line)
        if answer.get("timeout"):
            raise RuntimeError(f"{' '.join(tests)} ran past {timeout} s (output: {log})")
        if answer["returncode"] not in (0, 1):  # only failing tests catch a mutation: not a collection or usage
            # error, no tests collected, pytest's internal error or the package copy not imported
            raise RuntimeError(f"pytest could not run {' '.join(tests)} (exit {answer['returncode']}):\n"
                               f"{log.read_text()[-3000:]}")
        return answer["returncode"] == 0

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def package_copy(workdir: pathlib.Path) -> pathlib.Path:
    """A copy of the installed package under workdir/site (put first on the worker's sys.path)."""
    installed = subprocess.run([str(PYTHON), "-c", "import fourierft, os; print(os.path.dirname(fourierft.__file__))"],
                               capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    site = workdir / "site"
    shutil.copytree(installed, site / "fourierft", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


def check_python(mutation: Mutation, worker: Worker, log: pathlib.Path) -> bool:
    target = worker.site / pathlib.Path(mutation.file).relative_to("python")
    original = target.read_text()
    target.write_text(apply(original, mutation))
    try:
        return worker.pytest(mutation.pytest, log)
    finally:
        target.write_text(original)


# ---- C++ mutants, built in folders of their own ------------------------------------------------------------------
# The mutated source is compiled into the mutant's folder with the command ninja recorded for the checkout's build,
# and linked there with the checkout's other objects: the sources and the build folders are never written.

def library_build() -> pathlib.Path:
    """The build folder of the libfourierft.so and the tools that build/ uses: build/python
    (FOURIERFT_PREBUILT_LIBRARY, as scripts/bootstrap.sh configures it), or build/ itself."""
    for line in (ROOT / "build" / "CMakeCache.txt").read_text().splitlines():
        if line.startswith("FOURIERFT_PREBUILT_LIBRARY:") and line.split("=", 1)[1].strip():
            return pathlib.Path(line.split("=", 1)[1].strip()).parent
    return ROOT / "build"


def recorded_commands(build: pathlib.Path, target: str) -> list[list[str]]:
    """The commands ninja runs to build ``target`` from scratch in ``build``, split into arguments."""
    lines = subprocess.run(["ninja", "-C", str(build), "-t", "commands", target], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    commands = []
    for line in lines:
        line = line.removeprefix(": && ").removesuffix(" && :")
        commands.append(shlex.split(line))
    return commands


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def mutant_compile(commands: list[list[str]], build: pathlib.Path, source: pathlib.Path,
                   mutated: pathlib.Path) -> list[str] | None:
    """The recorded command that compiles ``source``, made to compile ``mutated`` instead; in a unity build, the one
    that compiles the Unity/*.cxx file including it, made to compile a copy (beside ``mutated``) that includes
    ``mutated``. None if no command compiles it."""
    include = f'#include "{source}"'
    for command in commands:
        if "-c" not in command:
            continue
        compiled = option_value(command, "-c")
        unity = (build / compiled).read_text() if "/Unity/" in compiled else ""
        if compiled == str(source):
            replacement = mutated
        elif include in unity.splitlines():
            replacement = mutated.parent / pathlib.Path(compiled).name
            replacement.write_text(unity.replace(include, f'#include "{mutated}"'))
        else:
            continue
        at = command.index("-c") + 1
        return [*command[:at], str(replacement), *command[at + 1:]]
    return None


def build_mutant(mutation: Mutation, folder: pathlib.Path) -> pathlib.Path:
    """Builds what the mutated file is part of (the library, or a tool) into ``folder``; returns the file."""
    source = ROOT / mutation.file
    if source.suffix != ".cpp":
        raise SystemExit(f"mutation '{mutation.name}': only .cpp files can be mutated (a header's includers would all "
                         "have to be rebuilt)")
    tool = tool_target(mutation)
    build, target, output = library_build(), tool or "libfourierft.so", tool or "libfourierft.so.0"
    commands = recorded_commands(build, target)
    folder.mkdir(parents=True, exist_ok=True)
    mutated = folder / source.name
    mutated.write_text(apply(source.read_text(), mutation))
    compile_ = mutant_compile(commands, build, source, mutated)
    links = [c for c in commands if "-o" in c and "-c" not in c and not option_value(c, "-o").endswith(".o")]
    link = links[-1] if links else None  # the target's own link comes after those of what it links
    if compile_ is None or link is None:
        raise SystemExit(f"mutation '{mutation.name}': ninja in {build} records no compile of {source} for {target}")
    obj = option_value(compile_, "-o")
    compile_ = [arg for i, arg in enumerate(compile_)  # no dependency files written into the build folder
                if arg != "-MD" and compile_[i - 1] not in ("-MT", "-MF") and arg not in ("-MT", "-MF")]
    compile_[compile_.index("-o") + 1] = str(folder / "mutant.o")
    compile_[1:1] = ["-iquote", str(source.parent)]  # its "..." includes, as from its own folder
    compile_.append("-O1")  # a third less compile time than Release's -O3; what the tests check does not change
    link = [str(folder / "mutant.o") if arg == obj else arg for arg in link]
    if str(folder / "mutant.o") not in link:
        raise SystemExit(f"mutation '{mutation.name}': {target}'s link in {build} does not take {obj}")
    link[link.index("-o") + 1] = str(folder / output)
    for command in (compile_, link):
        done = subprocess.run(command, cwd=build, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"mutation '{mutation.name}': building the mutant failed:\n"
                               + done.stdout[-3000:] + done.stderr[-3000:])
    return folder / output


def tool_target(mutation: Mutation) -> str:
    """The command-line tool a mutation of tools/<name>.cpp breaks (its CMake target), or ''."""
    path = pathlib.PurePath(mutation.file)
    return f"fourierft-{path.stem}" if path.parts[0] == "tools" else ""


def check_cpp(mutation: Mutation, worker: Worker, folder: pathlib.Path) -> bool:
    built = build_mutant(mutation, folder)
    tool = tool_target(mutation)
    survived = True
    env = {}
    if tool:  # the tests run this build of the tool (test_merge_cli.py reads FOURIERFT_MERGE)
        env[tool.replace("-", "_").upper()] = str(built)
    if mutation.gtest:  # the GoogleTest binary's RUNPATH yields to LD_LIBRARY_PATH: it loads the mutant
        binary = ROOT / "build" / "tests" / "fourierft_tests"
        gtest_env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
            [str(folder), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]))
        loads = subprocess.run(["ldd", str(binary)], env=gtest_env, capture_output=True, text=True).stdout
        if f"=> {built} " not in loads:
            raise RuntimeError(f"{binary} would not load the mutant {built}:\n{loads}")
        survived &= run([str(binary), f"--gtest_filter={mutation.gtest}"], env=gtest_env)
    if mutation.pytest:
        # pip installs the library's soname links as copies: every libfourierft.so* file of the copy is one.
        libraries = [] if tool else [
            p for p in (worker.site / "fourierft" / "lib").glob("libfourierft.so*") if not p.is_symlink()]
        installed = {p: p.read_bytes() for p in libraries}
        try:
            for library in libraries:
                library.write_bytes(built.read_bytes())
            survived &= worker.pytest(mutation.pytest, folder / "pytest.log", env)
        finally:
            for library, content in installed.items():
                library.write_bytes(content)
    return survived


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="store_true", help="only the Python mutations (nothing compiled)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--only", metavar="TEXT", help="only the mutations whose name contains TEXT")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="mutations checked at once (default: 2, or 1 on one core)")
    parser.add_argument("--ci", action="store_true",
                        help="CI's table (scripts/test.sh): every Python mutation and the C++ ones marked ci=True")
    parser.add_argument("--keep", metavar="DIR", help="keep the mutants' builds and test logs in DIR")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    # Every snippet of the table, chosen or not, must still occur exactly once: code that moved fails here, at once.
    for mutation in MUTATIONS:
        apply((ROOT / mutation.file).read_text(), mutation)
    chosen = [m for m in MUTATIONS if (not args.python or m.language == "python")
              and (not args.ci or m.language == "python" or m.ci)
              and (args.only is None or args.only in m.name)]
    if not chosen:
        raise SystemExit(f"no mutation matches --only {args.only!r} (see --list)")
    if args.list:
        for m in chosen:
            print(f"{m.language:6} {m.file}: {m.name}\n       caught by: {', '.join(m.pytest) or ''} "
                  f"{('gtest ' + m.gtest) if m.gtest else ''}")
        return 0
    survivors = []

    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(args.keep) if args.keep else pathlib.Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fourierft-mutants-")))
        # args.jobs mutations at a time, C++ and Python alike, each job with a worker and a package copy of its own
        workers = [Worker(package_copy(tmp / f"job{job}")) for job in range(args.jobs)]
        for worker in workers:
            stack.callback(worker.close)
        if not workers[0].pytest(("tests/python/test_optim.py",), tmp / "unmutated.log"):
            raise SystemExit(f"the unmutated package copy fails its tests: nothing to compare against "
                             f"({tmp / 'unmutated.log'})")
        free = queue.Queue()
        for worker in workers:
            free.put(worker)

        def check(index: int, m: Mutation):
            began, worker = time.perf_counter(), free.get()
            folder = tmp / f"mutant{index:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                caught_by_nothing = (check_cpp(m, worker, folder) if m.language == "cpp"
                                     else check_python(m, worker, folder / "pytest.log"))
                return m, caught_by_nothing, time.perf_counter() - began
            finally:
                free.put(worker)

        # The C++ ones first: they compile, the longest jobs.
        order = sorted(enumerate(chosen), key=lambda pair: pair[1].language != "cpp")
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for future in concurrent.futures.as_completed([pool.submit(check, i, m) for i, m in order]):
                m, survived, seconds = future.result()
                print(f"{'SURVIVED' if survived else 'caught':8} {seconds:5.1f} s  {m.file}: {m.name}", flush=True)
                if survived:
                    survivors.append(m)
    caught = len(chosen) - len(survivors)
    print(f"mutation check: {caught} caught, {len(survivors)} survived")
    for m in survivors:
        print(f"  survivor: {m.file}: {m.name} (tests: {', '.join(m.pytest)} {m.gtest})")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
