"""Your own continual-learning method as a plugin: an L2 pull towards the weights each task ended
with (EWC with every weight equally important). Agent files name it as "module:ClassName":

    plugins: [{name: "examples.l2_anchor:L2Anchor", kwargs: {strength: 1.0}}]

(`examples/lstm-l2.yaml`), so `sparc-rl train` and `sparc-rl bench` run it like a built-in method.
"""

from __future__ import annotations

import torch as th

from sparc_rl.buffers import SequenceBatch
from sparc_rl.plugins import ContinualPlugin
from sparc_rl.ppo import SparcPPO


class L2Anchor(ContinualPlugin):
    """Penalise ``strength * sum((theta - theta_end_of_last_task) ** 2)`` over the trainable weights.

    :param strength: weight of the penalty
    """

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength
        self.anchors: dict[str, th.Tensor] = {}

    def on_task_end(self, model: SparcPPO, task: str) -> None:
        self.anchors = {n: p.detach().clone() for n, p in model.policy.named_parameters() if p.requires_grad}

    def auxiliary_loss(self, model: SparcPPO, batch: SequenceBatch) -> th.Tensor | None:
        if not self.anchors:
            return None
        params = dict(model.policy.named_parameters())
        return self.strength * th.stack([(params[n] - anchor).pow(2).sum() for n, anchor in self.anchors.items()]).sum()
