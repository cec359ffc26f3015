"""The guest's hand-over to a run: read the configuration disk, start the run's agent.

The disk (/dev/vdb) holds one JSON object, padded with NUL bytes: ``files`` (name ->
text: the guest agent and the modules it imports, from the host's checkout) and
``config`` (what the agent does). The files go to /run/tb (a tmpfs), and the agent
runs there with the configuration.
"""
import json
import runpy
import sys

disk = sys.argv[1] if len(sys.argv) > 1 else "/dev/vdb"
with open(disk, "rb") as f:
    raw = f.read().rstrip(b"\0")
blob = json.loads(raw)
for name, text in blob["files"].items():
    with open(f"/run/tb/{name}", "w") as out:
        out.write(text)
sys.path.insert(0, "/run/tb")
sys.argv = ["guest_agent", json.dumps(blob["config"])]
runpy.run_path("/run/tb/guest_agent.py", run_name="__main__")
