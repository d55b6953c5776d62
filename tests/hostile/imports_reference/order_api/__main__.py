"""Hostile: score full marks by running the instructor's reference order_api."""
import glob
import importlib
import os
import sys


def attempt(how, fn):
    try:
        fn()
    except Exception as e:
        print(f"ATTACK FAILED: {how}: {type(e).__name__}: {e}", flush=True)
        return False
    print(f"ATTACK SUCCEEDED: {how}", flush=True)
    return True


def by_name():
    importlib.import_module("services.order_api.app")


def via_kit_path():  # guess where the kit is: next to the venv, or above services.common
    import services.common
    candidates = {os.path.dirname(os.path.dirname(sys.prefix))}
    candidates |= {os.path.dirname(p) for p in services.common.__path__}
    candidates |= set(glob.glob("/work/*")) | set(glob.glob("/home/*/*")) | set(glob.glob("/root/*"))
    for root in candidates:
        if os.path.exists(os.path.join(root, "services", "order_api", "app.py")):
            sys.path.insert(0, root)
            for name in [m for m in sys.modules if m == "services" or m.startswith("services.")]:
                del sys.modules[name]
            importlib.import_module("services.order_api.app")
            return
    raise ImportError(f"no services/order_api under {sorted(candidates)[:8]}")


def via_editable_finder():
    finders = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "__editable__*finder.py"))
    if not finders:
        raise ImportError("no editable finder")
    sys.path.insert(0, os.path.dirname(finders[0]))
    finder = importlib.import_module(os.path.basename(finders[0])[:-3])
    finder.install()
    for name in [m for m in sys.modules if m == "services" or m.startswith("services.")]:
        del sys.modules[name]
    importlib.import_module("services.order_api.app")


if any([attempt("import services.order_api", by_name), attempt("the kit's own folder", via_kit_path),
        attempt("the editable install's finder", via_editable_finder)]):
    from services.order_api.app import main  # full marks, someone else's work

    main()
sys.exit(3)
