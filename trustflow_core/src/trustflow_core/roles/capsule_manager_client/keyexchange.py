"""The ``capsule_manager`` key exchange: a TEE app's client of the Capsule Manager.

``get_data_keys`` sends ``GetDataKeys`` with an attestation report binding
``SHA-256(app_cert_pem || "." || serialize(ResourceRequest))`` (docs/compat.md#report-binding);
``register_result_key`` sends ``CreateResultDataKey`` with a report binding
``SHA-256(serialize(Body))``. Responses are sealed to the app key, which never leaves the app.

Settings:

* ``endpoint`` (required) -- ``host:port`` of the CM, or of several replicas of it
  (``"h1:p1,h2:p2"`` or a list; a host name may resolve to several addresses): requests
  fail over between them (docs/failover.md);
* ``attester`` -- attester backend name (``sim``, ``tdx``, ...); absent or ``none``: no report
  (only accepted by a CM started with ``--allow-upstream-sim``);
* ``attester_settings`` -- mapping passed to the attester;
* ``private_key_file`` / ``cert_file`` -- the app identity (default: a fresh RSA-3072 key and
  self-signed certificate per instance, as TEEAPPS does);
* ``tee_plat`` / ``tee_constraints`` -- how the CM's own report is checked (default: the
  development default verifier, which is simulated: not checked, like upstream sim clients);
* ``owner_id`` -- ``owner_id`` of registered result keys (default ``""`` as upstream apps);
* ``timeout`` -- seconds per call (default 30);
* ``envelope_channel`` -- envelope channel backend of the CM client (default ``jwe``).

Roles build it with :meth:`CapsuleManagerKeyExchange.from_role`: the attester, the channel and
the verifiers come from the role's plugin manager. The module imports without the Capsule
Manager's stack (grpc, protobuf): the backend is then listed as not usable, with the
``pip install`` that provides it.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import rsa
from typing_extensions import Self

from ...attestation import Attester, ra_user_data
from ...errors import InvalidInput
from ...extras import missing_extra
from ...identity import self_signed_cert
from ...keyexchange import DataKey, KeyExchange, ResourceRequest, ResultKey, TlsAsset
from ...settings_schema import Node

if TYPE_CHECKING:
    from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
    from .client import Credentials

if TYPE_CHECKING:
    import pluggy

SETTINGS = {
    "endpoint",
    "attester",
    "attester_settings",
    "private_key_file",
    "cert_file",
    "tee_plat",
    "tee_constraints",
    "owner_id",
    "timeout",
    "envelope_channel",
}


def ephemeral_credentials(common_name: str = "TeeApps", *, key_size: int = 3072) -> Credentials:
    """A fresh RSA key and a self-signed certificate for it (valid for a year)."""
    from .client import Credentials

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    cert = self_signed_cert(key, common_name, backdate=datetime.timedelta(minutes=5))
    return Credentials(key, (cert,))


def resource_request_pb(request: ResourceRequest) -> cm_pb2.ResourceRequest:
    from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2

    return cm_pb2.ResourceRequest(
        initiator_party_id=request.initiator_party_id,
        scope=request.scope,
        op_name=request.op_name,
        resources=[
            cm_pb2.ResourceRequest.Resource(
                resource_uri=r.resource_uri, columns=list(r.columns), attrs=r.attrs
            )
            for r in request.resources
        ],
        env=request.env,
        global_attrs=request.global_attrs,
    )


class CapsuleManagerKeyExchange(KeyExchange):
    """Data keys from a Capsule Manager after attestation and policy. See the module doc."""

    name: ClassVar[str] = "capsule_manager"

    @classmethod
    def unviable_reason(cls) -> str | None:
        return missing_extra(
            "data-capsule-proxy",
            "the capsule_manager key exchange",
            ("grpc", "google.protobuf", "trustflow_channel_jwe"),
        )

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        attester: Attester | None = None,
        credentials: Credentials | None = None,
        tee_plat: str | None = None,
        tee_constraints: Mapping[str, str | None] | None = None,
        owner_id: str = "",
        timeout: float = 30.0,
        pm: pluggy.PluginManager | None = None,
        envelope_channel: str = "jwe",
    ) -> None:
        self.endpoint = endpoint if isinstance(endpoint, str) else ",".join(endpoint)
        self.attester = attester
        from .client import CapsuleManagerClient

        self.credentials = credentials or ephemeral_credentials()
        self.owner_id = owner_id
        self.client = CapsuleManagerClient(
            endpoint,
            tee_plat=tee_plat,
            tee_constraints=tee_constraints,
            timeout=timeout,
            pm=pm,
            envelope_channel=envelope_channel,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r})"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        """Standalone use: the attester, channel and verifiers come from the installed plugins
        (:func:`~trustflow_core.manager.get_plugin_manager`); roles call :meth:`from_role`."""
        from ...manager import get_plugin_manager

        return cls.from_role(settings, pm=get_plugin_manager())

    @classmethod
    def from_role(cls, settings: Mapping[str, Any] | None, *, pm: pluggy.PluginManager) -> Self:
        """Build with the role's plugin manager ``pm``: the ``attester`` is chosen from it and
        the CM client uses it for its channel and verifiers."""
        root = Node.settings(settings, "capsule_manager key exchange settings").mapping(
            SETTINGS, required=("endpoint",)
        )
        from ...registry import ATTESTER, backend_class
        from .client import Credentials

        attester = None
        name = root.get("attester").string(None, empty=True)
        if name not in (None, "", "none"):
            attester_settings = root.get("attester_settings")
            attester = attester_settings.build(
                lambda value: backend_class(pm, ATTESTER, name).from_role(value, pm=pm)
            )
        creds = None
        key_file = root.get("private_key_file").path(None)
        cert_file = root.get("cert_file").path(None)
        if key_file or cert_file:
            if not (key_file and cert_file):
                raise root.error("give both private_key_file and cert_file")
            creds = Credentials.from_files(key_file, [cert_file])
        constraints = root.get("tee_constraints")
        return cls(
            root.get("endpoint").endpoints(check=False),
            attester=attester,
            credentials=creds,
            tee_plat=root.get("tee_plat").string(None),
            tee_constraints=constraints.mapping().value if constraints.present else None,
            owner_id=root.get("owner_id").string("", empty=True),
            timeout=root.get("timeout").number(30.0, zero_ok=False),
            pm=pm,
            envelope_channel=root.get("envelope_channel").name("jwe"),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _report(self, digest: bytes) -> Any:
        from ..capsule_manager_protocol.reports import report_to_pb

        if self.attester is None:
            return None
        return report_to_pb(await self.attester.generate(digest))

    async def get_data_keys(self, request: ResourceRequest) -> list[DataKey]:
        from ...wire import serialize_canonical
        from .client import CapsuleManagerError

        rr = resource_request_pb(request)
        cert_pem = self.credentials.chain_pems[0].encode()
        report = await self._report(ra_user_data(cert_pem, serialize_canonical(rr)))
        try:
            keys = await self.client.get_data_keys(self.credentials, rr, report)
        except CapsuleManagerError as exc:
            raise exc.as_contract_error() from None
        wanted = [r.resource_uri for r in request.resources]
        if [k.resource_uri for k in keys] != wanted:
            raise InvalidInput("capsule manager returned keys for other resources than asked")
        return [DataKey(k.resource_uri, base64.b64decode(k.data_key_b64)) for k in keys]

    async def get_tls_asset(self, request: ResourceRequest) -> TlsAsset:
        from ...wire import serialize_canonical
        from .client import CapsuleManagerError

        rr = resource_request_pb(request)
        cert_pem = self.credentials.chain_pems[0].encode()
        report = await self._report(ra_user_data(cert_pem, serialize_canonical(rr)))
        try:
            resp = await self.client.get_tls_asset(self.credentials, rr, report)
        except CapsuleManagerError as exc:
            raise exc.as_contract_error() from None
        return TlsAsset(resp.tls_asset.cert.encode(), resp.tls_asset.private_key.encode())

    async def register_result_key(self, result: ResultKey) -> None:
        import hashlib

        from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
        from ...wire import serialize_canonical
        from .client import CapsuleManagerError

        body = cm_pb2.CreateResultDataKeyRequest.Body(
            owner_id=result.owner_id or self.owner_id,
            resource_uri=result.resource_uri,
            scope=result.scope,
            data_key_b64=base64.b64encode(result.key).decode(),
            ancestor_uuids=list(result.ancestor_uuids),
        )
        report = await self._report(hashlib.sha256(serialize_canonical(body)).digest())
        try:
            await self.client.create_result_data_key(self.credentials, body, report)
        except CapsuleManagerError as exc:
            raise exc.as_contract_error() from None
