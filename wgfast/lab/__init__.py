"""The lab: what wgfast uses to show and measure itself, apart from the daemon's code.

netns.py builds network namespaces, veth links and tunnels of real daemons; demo.py,
benchreport.py and flood.py are the demo, the throughput report and the hostile-traffic
generator built on it; cli.py is the `wgfast` command that runs them (and `wgfast top`).
"""
