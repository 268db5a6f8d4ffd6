"""The daemon as a background service: `cohere-transcribe agent install|uninstall|status` (launchd on macOS,
a systemd user unit on Linux).

    host.py      the machine's facts (OS, home, environment, uid, Python) and the runner of OS commands
    spec.py      what the service runs: command line, config file, environment, working folder, log file
    configfile.py  the TOML config file `agent install` writes from its flags
    launchd.py   the LaunchAgent plist and launchctl
    systemd.py   the user unit and systemctl --user
    agent.py     install / uninstall / status for whichever of the two this OS has, and the daemon's /health
"""
