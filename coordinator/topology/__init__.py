"""The docker-compose deployment as local processes (``coordinator simulate``), in four parts.

* :mod:`coordinator.topology.env`: the pure environment builder. Each role's environment
  variables (exactly what docker-compose.yml sets), the process base environment, the Flower
  app folder, run-config TOML files. No processes, no sockets; the deployment path
  (:mod:`coordinator.federated_cli`) imports only this module.
* :mod:`coordinator.topology.supervisor`: starts processes in their own sessions, waits for
  health checks, stops process groups; distinct free ports, port-clash restarts.
* :mod:`coordinator.topology.watch`: watches the site processes while the run goes on (health,
  exits, restarts; no processes started there) and writes the per-site end summary.
* :mod:`coordinator.topology.simulate`: the orchestration of one simulated run and the
  ``coordinator simulate`` command.
"""
