def require_gradio(): pass
def create_demo(engine): raise NotImplementedError
