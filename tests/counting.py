"""A test encoder wrapper shared by test modules."""


class CountingEncoder:
    """The tiny encoder, counting the images it embeds (to prove what an index run or upgrade re-embeds)."""

    def __init__(self, inner) -> None:
        self.inner, self.images = inner, 0
        self.model_id, self.dim, self.supports_text, self.device = inner.model_id, inner.dim, True, "cpu"

    def embed_images(self, images, batch_size: int = 32):
        self.images += len(images)
        return self.inner.embed_images(images, batch_size=batch_size)

    def embed_texts(self, texts):
        return self.inner.embed_texts(texts)
