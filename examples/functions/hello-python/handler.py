"""Greets whoever the JSON body names, or the world."""


def handle(req):
    try:
        data = req.json()
    except ValueError:  # no body, or not JSON
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str) and name.strip():
        return {"message": f"Hello, {name.strip()}!"}
    return "Hello from sedge!"
