"""The docker-compose deployment as local processes (``coordinator simulate``), in three parts.

* :mod:`coordinator.topology.env`: the pure environment builder. Each role's environment
  variables (exactly what docker-compose.yml sets), the process base environment, the Flower
  app folder, run-config TOML files. No processes, no sockets; the deployment path
  (:mod:`coordinator.federated_cli`) imports only this module.
* :mod:`coordinator.topology.supervisor`: starts processes in their own sessions, waits for
  health checks, stops process groups.
* :mod:`coordinator.topology.simulate`: the orchestration of one simulated run and the
  ``coordinator simulate`` command.
"""
