"""The lab: what wgfast uses to show and measure itself, apart from the daemon's code.

topology.py builds network namespaces and veth links, daemons.py runs real WireGuard daemons
and tunnels in them, tools.py wraps wg's key commands and iperf3; netns.py gathers their names
in one import.  demo.py, benchreport.py (measure.py, report.py) and flood.py are the demo, the
throughput report and the hostile-traffic generator built on them; cli.py is the `wgfast`
command that runs them (and `wgfast top`).
"""
