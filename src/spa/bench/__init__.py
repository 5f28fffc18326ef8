"""Speed measurements behind ``scripts/bench.py``: real latency of the networks our pruning leaves,
next to their MACs; the cost of adapters at inference and in training (ours, and the authors'
``structured-pruning-adapters`` library on the same layers); the cost of scoring and pruning; the
block-sparse forms; deployment runtimes; one base serving many tasks. One module per family.

Every figure is a median over repeated runs after warm-up, and is also given as a ratio to a
baseline measured in the same call. Models compared with each other are timed interleaved (one
pass of each in turn, per repeat), so a slow drift of the machine hits them alike. Library code
never imports this package.
"""
from spa.bench.deployment import DEPLOY_DENSITIES, DEPLOY_NETS, DEPLOY_TARGET, deploy_latency
from spa.bench.inference import adapter_overhead, inference_vs_density
from spa.bench.latency_model import accuracy_rows
from spa.bench.nets import (
    ADAPTERS,
    AUTHORS_LIBRARY,
    DEIT_S,
    DENSITIES,
    LITE0,
    MOBILENETV2,
    NETS,
    RESNET50,
    RESNET50_CIFAR,
    SEED,
    NetSpec,
    dense_model,
    masked_copy,
    pruned_versions,
)
from spa.bench.pruning_cost import pruning_overhead
from spa.bench.sparse import (
    BLOCK_DENSITIES,
    DEIT_S_LINEARS,
    DEIT_S_TOKENS,
    block_sparse_inference,
    splopa_factored_forward,
    splopa_layer,
    splopa_training_forms,
)
from spa.bench.targets import checks
from spa.bench.tasks import TASK_COUNTS, task_switching
from spa.bench.timing import latency, peak_memory, saved_activation_bytes
from spa.bench.training import authors_available, authors_model, layer_speed, layer_totals, training_step

__all__ = ["ADAPTERS", "AUTHORS_LIBRARY", "BLOCK_DENSITIES", "DEIT_S", "DEIT_S_LINEARS", "DEIT_S_TOKENS",
           "DENSITIES", "DEPLOY_DENSITIES", "DEPLOY_NETS", "DEPLOY_TARGET", "LITE0", "MOBILENETV2", "NETS",
           "RESNET50", "RESNET50_CIFAR", "SEED", "TASK_COUNTS", "NetSpec", "accuracy_rows", "adapter_overhead",
           "authors_available", "authors_model", "block_sparse_inference", "checks", "dense_model", "deploy_latency",
           "inference_vs_density", "latency", "layer_speed", "layer_totals", "masked_copy", "peak_memory",
           "pruned_versions", "pruning_overhead", "saved_activation_bytes", "splopa_factored_forward",
           "splopa_layer", "splopa_training_forms", "task_switching", "training_step"]
