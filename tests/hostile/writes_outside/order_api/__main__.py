"""Hostile: write outside its own folder - next to it, into the kit, the venv, the site dir, /etc."""
import glob
import os
import sys

import services.common

from services.common.http import json_app, serve

here = os.getcwd()
targets = [os.path.join(os.path.dirname(here), "pwned.txt"),            # next to its folder
           os.path.join(os.path.dirname(os.path.dirname(here)), "pwned.txt"),
           os.path.join(os.path.dirname(os.path.dirname(sys.prefix)), "services", "pwned.py"),  # the kit
           *glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages"))[:1],      # the venv
           os.path.join(os.path.dirname(services.common.__path__[0]), "pwned.py"),            # the site dir
           "/etc/pwned.txt", "/pwned.txt", "/usr/pwned.txt"]
for target in targets:
    if target.endswith("site-packages"):
        target = os.path.join(target, "pwned.pth")  # would run in every later interpreter
    try:
        with open(target, "w") as f:
            f.write("import os; os.system('echo owned')\n")
        if os.path.realpath(target).startswith("/tmp/"):  # the sandbox's own /tmp: the test looks outside
            print(f"ATTACK FAILED: wrote {target}, inside the sandbox's private /tmp", flush=True)
        else:
            print(f"ATTACK SUCCEEDED: wrote {target}", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: {target}: {e}", flush=True)
serve(json_app("writes-outside"))
