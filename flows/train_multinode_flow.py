"""TrainFlow with `train` spread over several nodes: Metaflow's @parallel starts
`train.num_nodes` tasks (a pod each under --with kubernetes, a multi-node job under --with
batch), and each starts `train.num_processes` torchrun ranks of one job that meets at the
first node's address. Every other step is TrainFlow's.

    python flows/train_multinode_flow.py --config config flows/configs/celeba-vit-base-2x8.json \\
        run --data gs://my-bucket/datasets/celeba --with kubernetes

The nodes need a shared place for the prepared shards and the checkpoints: FACET_CACHE=gs://...
and the GCS datastore (see docs/scaling-out.md).
"""

from metaflow import card, current, parallel, resources, retry, step, timeout
from train_flow import TrainFlow


class TrainMultiNodeFlow(TrainFlow):
    """Train, evaluate and version a 40-attribute CelebA ViT, training on several nodes."""

    @card(type="blank")
    @step
    def prepare_data(self, inputs):
        """Join the shards: the manifest becomes the `dataset` artifact."""
        self.join_shards(inputs)
        self.next(self.start_nodes)

    @step
    def start_nodes(self):
        """Start `train.num_nodes` training tasks (a join step cannot also fan out)."""
        self.next(self.train, num_parallel=self.config.train.num_nodes)

    @resources(
        cpu=TrainFlow.config.resources.cpu,
        memory=TrainFlow.config.resources.memory,
        gpu=TrainFlow.config.resources.gpu,
    )
    @retry(times=TrainFlow.config.retries)
    @timeout(hours=TrainFlow.config.timeout_hours)
    @card(type="blank", refresh_interval=5)
    @parallel
    @step
    def train(self):
        """One node of the job; the node holding global rank 0 stores the model."""
        import zlib

        from lib.distributed import node_of

        # A port per run (the same on every node), so that runs sharing a machine do not
        # collide; run ids are not always numbers (Argo's are names).
        port = 20000 + zlib.crc32(current.run_id.encode()) % 10000
        nodes = current.parallel
        self.train_model(launch=node_of(nodes.num_nodes, nodes.node_index, nodes.main_ip, port))
        self.next(self.gather_model)

    @step
    def gather_model(self, inputs):
        """Carry on with the model, curve and world size that one node stored."""
        self.merge_artifacts(inputs)
        self.next(self.evaluate)


if __name__ == "__main__":
    TrainMultiNodeFlow()
