"""The image store the settings name: S3_BUCKET's, else the folder $DATA_DIR/images. The
service and the fleet's GPU workers open the same one."""

from __future__ import annotations

from pydantic import SecretStr

from bot.config import Settings
from storage.imagestore import ImageStore, open_image_store


def open_store(settings: Settings) -> ImageStore:
    return open_image_store(
        data_dir=settings.data_dir / "images",
        s3_bucket=settings.s3_bucket,
        s3_endpoint_url=str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None,
        s3_region=settings.s3_region,
        s3_access_key_id=_secret(settings.s3_access_key_id),
        s3_secret_access_key=_secret(settings.s3_secret_access_key),
        s3_prefix=settings.s3_prefix,
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
