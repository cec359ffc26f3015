"""The contention topology as plain data: its hosts, their addresses, its links.

This is the one description of the topology (``contention.py`` has the picture and
the address table), written without Mininet so that every user reads the same
rules: ``contention.py`` builds its Mininet ``ContentionTopo`` from it (the Mininet
backend, ``mn --custom``), and the testbed's link planning
(``testbed.backends.shaping``) and the Docker nodes read it directly, so the Docker
backend and the node image need no Mininet at all.

A link is ``( host, switch, opts )``, as Mininet's ``Topo.addLink( host, switch,
**opts )`` takes it: the ports (``port1`` on the host, ``port2`` on the switch)
and ``TCLink``'s option names (``bw`` in Mbit/s, ``delay`` as a string such as
``'10ms'``, ``loss`` in percent, ``max_queue_size`` in packets).

Standard library only: Debian's ``/usr/bin/mn`` loads this file with the system
Python (through ``contention.py``).
"""

from typing import Any, Optional

LinkOpts = dict[ str, Any ]
LinkDesc = tuple[ str, str, LinkOpts ]    # ( host, switch, opts )

MAX_BULK = 64
SUBNET = '10.0.0.0/24'
PREFIX_LEN = 24
SWITCH = 's1'


def host_ip( name: str ) -> str:
    "Fixed IPv4 address (without prefix) of a host of this topology."
    fixed = { 'client': '10.0.0.1', 'target': '10.0.0.2' }
    return fixed.get( name ) or '10.0.0.%d' % ( 10 + _bulk_index( name ) )


def host_cidr( name: str ) -> str:
    "A host's address with the subnet's prefix length, as its interface carries it."
    return '%s/%d' % ( host_ip( name ), PREFIX_LEN )


def host_mac( name: str ) -> str:
    "Fixed, locally administered MAC address of a host of this topology."
    last = int( host_ip( name ).rsplit( '.', 1 )[ 1 ] )
    return '02:00:00:00:00:%02x' % last


def switch_port( name: str ) -> int:
    "The switch port of a host's link: client 1, target 2, bulk<i> 2 + i."
    return { 'client': 1, 'target': 2 }.get( name ) or 2 + _bulk_index( name )


def _bulk_index( name: str ) -> int:
    "i of bulk<i>; ValueError for a name that is no host of this topology."
    if name.startswith( 'bulk' ) and name[ 4: ].isdigit():
        return int( name[ 4: ] )
    raise ValueError( 'contention topology has no host %r' % name )


def link_opts( bw: float, delay: float, loss: float,
               queue: Optional[ int ] ) -> LinkOpts:
    "TCLink options for one link; zero delay/loss are left out."
    opts: LinkOpts = { 'bw': bw }
    if delay:
        opts[ 'delay' ] = '%gms' % float( delay )
    if loss:
        opts[ 'loss' ] = float( loss )
    if queue is not None:
        opts[ 'max_queue_size' ] = int( queue )
    return opts


# pylint: disable=too-many-arguments
def contention_links( n: int = 2, bw_client: float = 10, bw: float = 100,
                      delay: float = 0, loss: float = 0,
                      queue: Optional[ int ] = None, trunk_delay: float = 0,
                      trunk_loss: float = 0 ) -> list[ LinkDesc ]:
    """The links in order (client, target, bulk1..n), each ( host, switch, opts ).
       n: number of bulk hosts (0..64)
       bw_client: Mbit/s of the client's access link (the bottleneck)
       bw: Mbit/s of every other link
       delay: one-way delay of the client link, ms
       loss: random loss on the client link, percent
       queue: queue length of every shaped interface, packets (None: default)
       trunk_delay, trunk_loss: the same for the target and bulk links"""
    n, bw_client, bw = int( n ), float( bw_client ), float( bw )

    def link( host: str, opts: LinkOpts ) -> LinkDesc:
        return ( host, SWITCH, dict( port1=0, port2=switch_port( host ), **opts ) )

    trunk = link_opts( bw, trunk_delay, trunk_loss, queue )
    return ( [ link( 'client', link_opts( bw_client, delay, loss, queue ) ),
               link( 'target', trunk ) ] +
             [ link( 'bulk%d' % i, trunk ) for i in range( 1, n + 1 ) ] )
