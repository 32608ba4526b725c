"""The train stage's default layout (``TrainConfig.layout``): one worker with the node's CPUs on a CPU cluster, one
worker per GPU with ``use_gpu``, and a user's explicit ``num_workers`` / ``cpus_per_worker`` kept (no Ray)."""

from __future__ import annotations

from pipeline.config import TrainConfig


def test_cpu_default_is_one_worker_holding_the_node_less_data_cpus():
    tc = TrainConfig().layout(node_cpus=2, cluster_cpus=2, cluster_gpus=0)
    assert (tc.num_workers, tc.cpus_per_worker, tc.torch_threads) == (1, 1.75, 2)
    big = TrainConfig().layout(node_cpus=16, cluster_cpus=24, cluster_gpus=0)  # the biggest node, not the sum
    assert (big.num_workers, big.cpus_per_worker, big.torch_threads) == (1, 15.75, 16)


def test_gpu_default_is_one_worker_per_gpu_sharing_the_cpus():
    tc = TrainConfig(use_gpu=True).layout(node_cpus=16, cluster_cpus=16, cluster_gpus=4)
    assert (tc.num_workers, tc.cpus_per_worker, tc.torch_threads) == (4, 3.75, 4)
    one = TrainConfig(use_gpu=True).layout(node_cpus=2, cluster_cpus=2, cluster_gpus=1)
    assert (one.num_workers, one.cpus_per_worker) == (1, 1.75)


def test_explicit_layout_is_kept():
    tc = TrainConfig(num_workers=2, cpus_per_worker=0.5).layout(node_cpus=2, cluster_cpus=2, cluster_gpus=0)
    assert (tc.num_workers, tc.cpus_per_worker, tc.torch_threads) == (2, 0.5, 1)
    workers_only = TrainConfig(num_workers=3).layout(node_cpus=8, cluster_cpus=8, cluster_gpus=0)
    assert (workers_only.num_workers, workers_only.cpus_per_worker) == (3, 2.5)  # 7.75 shared
