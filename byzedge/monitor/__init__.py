"""``byzedge monitor``: a read-only, live view of one fleet.

Three parts, each usable alone:

* :mod:`byzedge.monitor.config` reads ``monitor.toml``;
* :mod:`byzedge.monitor.view` folds the fleet's MQTT messages (round summaries, device
  statuses, alerts) into a :class:`~byzedge.monitor.view.FleetView`, a pure state machine
  with no I/O, which never raises on what it receives;
* :mod:`byzedge.monitor.render` draws a view with ``rich`` (a live terminal screen, or one
  plain-text frame).

The command itself (MQTT client, main loop, output modes) is
:mod:`byzedge.commands.monitor`.
"""
