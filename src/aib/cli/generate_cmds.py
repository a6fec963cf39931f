def register(app):  # placeholder
    return None
