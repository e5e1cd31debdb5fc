"""Peer baselines beside the MT-KD student rows: ``local_only``, ``pooled``, ``fedavg``
(Flower's own ``FedAvg`` strategy), ``fedprox`` (Flower's ``FedProx``) and ``fedbn`` (FedAvg
less the BatchNorm layers, kept at each site), each trained and scored like the student rows,
plus what every row costs the sites (:mod:`.costs`). :func:`.rows.baseline_rows` is the hook
``coordinator distill --local`` passes to :func:`coordinator.distill.experiment.run_experiment`.
"""
