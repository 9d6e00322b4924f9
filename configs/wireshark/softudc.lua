-- Wireshark / tshark dissector for SoftUDC messages on UDP port 1798 (DESIGN.md, "Wire decisions").
-- Usage: tshark -X lua_script:configs/wireshark/softudc.lua -d udp.port==1798,softudc -r capture.pcap
-- A frame message (id 2) hands the rest to Wireshark's own EtherIP dissector, which then decodes
-- the guest's Ethernet frame. The EtherIP "reserved" bits carry the VNET id, so Wireshark warns
-- "Reserved field must be 0" for every VNET but 0; the frame is still dissected.
local softudc = Proto("softudc", "SoftUDC VNET message")
local ids = { [1] = "VARP", [2] = "Frame", [3] = "vnetd relay" }
local f_id = ProtoField.uint16("softudc.id", "Message id", base.DEC, ids)
local f_opcode = ProtoField.uint16("softudc.opcode", "Opcode / flags", base.HEX)
local f_vnet = ProtoField.uint16("softudc.vnet", "VNET id", base.DEC, nil, 0x0fff)
softudc.fields = { f_id, f_opcode, f_vnet }

local etherip = Dissector.get("etherip")

function softudc.dissector(tvb, pinfo, tree)
    if tvb:len() < 4 then return 0 end
    local id = tvb(0, 2):uint()
    local t = tree:add(softudc, tvb(0, 4), "SoftUDC " .. (ids[id] or "unknown"))
    t:add(f_id, tvb(0, 2))
    t:add(f_opcode, tvb(2, 2))
    pinfo.cols.protocol = "SoftUDC"
    if id == 2 and tvb:len() >= 6 then
        t:add(f_vnet, tvb(4, 2))
        etherip:call(tvb(4):tvb(), pinfo, tree)
    end
    return tvb:len()
end

DissectorTable.get("udp.port"):add(1798, softudc)
