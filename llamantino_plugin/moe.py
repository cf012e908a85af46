"""A mixture of experts' router load-balancing loss, in the trainer's logs as ``moe_aux_loss``.

A recipe for an MoE model sets ``overrides_of_model_config: {output_router_logits: true, ...}``
(llamantino/render/axolotl.py), so each training forward returns ``aux_loss``: the load-balancing
loss of its routers, which the model adds to the language-model loss (times ``router_aux_loss_coef``).
A forward hook on the model the trainer calls adds each training forward's ``aux_loss`` up; at each logging step the
sum and count are reduced over every rank (every rank logs on the same step) and their mean, over
the micro-batches of the logging window, is handed to the trainer's stored metrics, so it appears
in the log line, ``trainer_state.json`` and the trackers beside ``loss``:

    {'loss': 4.1, ..., 'moe_aux_loss': 2.003}

It is stored before the trainer logs (``on_step_end``, where the trainer has decided to log):
a value added in ``on_log`` would miss ``log_history``, which is written before callbacks run.
Evaluation forwards are not counted. DPO is left alone: TRL's DPO trainer adds the aux loss to its
loss and logs it itself (``aux_loss``), so counting it here would count it twice; its weight is
set to the model's (TRL's own default is 0.001).

Nothing happens at import; the hook is registered by the plugin's ``add_callbacks_post_trainer``.
"""

from __future__ import annotations

METRIC = "moe_aux_loss"


def routed_model(model):
    """The transformers model under a PEFT wrapper: the one whose config says what it returns."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def returns_router_loss(model) -> bool:
    """Whether the model's config asks it to return its routers' load-balancing loss."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return bool(getattr(config, "output_router_logits", False))


def moe_aux_loss_callback(cfg, trainer):
    """The callback logging ``moe_aux_loss`` for this trainer, or None: no MoE router loss to log
    (a dense model, output_router_logits off) or TRL logs it itself (DPO)."""
    model = routed_model(trainer.model)
    if not returns_router_loss(model):
        return None
    if cfg.rl:
        # TRL's DPO weights the router loss with its own router_aux_loss_coef (0.001 by default), not the
        # model's: the recipe's weight (model.experts.router_aux_loss_coef, on the model's config) is set.
        weight = getattr(getattr(model, "config", None), "router_aux_loss_coef", None)
        if weight is not None and hasattr(trainer, "router_aux_loss_coef"):
            trainer.router_aux_loss_coef = float(weight)
            trainer.aux_loss_enabled = trainer.aux_loss_enabled and float(weight) != 0.0
        return None
    if not callable(getattr(trainer, "store_metrics", None)):
        print(f"llamantino: {type(trainer).__name__} keeps no stored metrics; {METRIC} is not logged", flush=True)
        return None
    # The hook goes on the model the trainer calls: PEFT calls the transformers model's forward
    # directly (LoraModel.forward -> model.forward), which runs no hooks of it; the output is the same.
    return _callback_class()(trainer, trainer.model)


def _callback_class():
    import torch
    from transformers import TrainerCallback

    class MoeAuxLoss(TrainerCallback):
        def __init__(self, trainer, model) -> None:
            self.trainer = trainer
            self.total = None  # the aux losses of this logging window's training forwards, summed (a tensor)
            self.count = 0
            self.handle = model.register_forward_hook(self._hook)

        def _hook(self, module, args, returned) -> None:
            if not module.training or not torch.is_grad_enabled():
                return
            # a ModelOutput (attribute and key alike) or a plain dict
            aux = returned.get("aux_loss") if isinstance(returned, dict) else getattr(returned, "aux_loss", None)
            if not isinstance(aux, torch.Tensor):
                return
            value = aux.detach().float().sum()
            self.total = value if self.total is None else self.total + value.to(self.total.device)
            self.count += 1

        def _window_mean(self) -> float | None:
            """The mean over this window's forwards on every rank; a collective where ranks run together."""
            from llamantino_plugin.ranks import collective_device, process_group

            dist = process_group()
            total = float(self.total) if self.total is not None else 0.0
            sums = torch.tensor([total, float(self.count)], dtype=torch.float64,
                                device=collective_device(dist) if dist else "cpu")
            if dist:
                dist.all_reduce(sums)
            self.total, self.count = None, 0
            total, count = (float(item) for item in sums.tolist())
            return total / count if count else None

        def on_step_end(self, args, state, control, **kwargs):
            if not control.should_log:  # the trainer logs after this step: the window closes
                return control
            value = self._window_mean()
            if value is not None:  # a non-finite value is logged as it is: it is the news
                self.trainer.store_metrics({METRIC: value}, train_eval="train")
            return control

        def on_train_end(self, args, state, control, **kwargs):
            self.handle.remove()
            return control

    return MoeAuxLoss
