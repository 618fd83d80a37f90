"""The address type aliases every room annotates with (either IP family): ipam is the lowest room that needs them,
so the datapath and both faces import them from here."""
import ipaddress

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
