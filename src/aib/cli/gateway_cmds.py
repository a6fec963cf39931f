def register(app):  # placeholder until the gateway commands land
    return None
